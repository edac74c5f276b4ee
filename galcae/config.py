"""Configuration: one frozen dataclass per stage, loaded from YAML with dotted overrides.

A config file has one section per stage (``simulate:``, ``train:``). Presets ship in
``galcae/configs/`` and are usable by name (``paper``). Unknown keys and out-of-range
values raise :class:`ConfigError` with the dotted key in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from .errors import ConfigError
from .params import DERIVED, FIT_PARAMETERS, MODEL_CONDITIONS, PARAMETERS, SIMULATED


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config value '{key}': {message}")


def _check_range(value, key: str, lo: float, hi: float) -> None:
    _check(lo <= value <= hi, key, f"{value} is outside the allowed range [{lo}, {hi}]")


def _check_value_or_range(value, key: str, lo: float, hi: float) -> None:
    """A fixed number, or a ``[low, high]`` range drawn per galaxy, inside ``[lo, hi]``."""
    for v in (value if isinstance(value, tuple) else (value,)):
        _check_range(v, key, lo, hi)
    if isinstance(value, tuple):
        _check(value[0] <= value[1], key, f"lower end {value[0]} is above upper end {value[1]}")


def span(value) -> tuple[float, float]:
    """``(low, high)`` of a fixed value or a range."""
    return tuple(value) if isinstance(value, tuple) else (value, value)


#: A number, or ``[low, high]``: drawn uniformly per galaxy (the observing conditions of a survey).
ValueOrRange = typing.Union[float, tuple[float, float]]


@dataclass(frozen=True)
class PSFConfig:
    """The point-spread function convolved with every galaxy."""

    profile: str = "gaussian"  # "gaussian" or "moffat"
    fwhm: ValueOrRange = 0.7  # arcsec; the paper says "typical ground-based seeing"
    beta: ValueOrRange = 3.5  # Moffat index, used only when profile is "moffat"

    def __post_init__(self):
        _check(self.profile in ("gaussian", "moffat"), "psf.profile",
               f"'{self.profile}' is not one of 'gaussian', 'moffat'")
        _check_value_or_range(self.fwhm, "psf.fwhm", 0.05, 10.0)
        _check_value_or_range(self.beta, "psf.beta", 1.1, 20.0)


@dataclass(frozen=True)
class NoiseConfig:
    """CCD noise: Poisson on source + sky (in electrons), Gaussian read noise.

    Images are stored sky-subtracted, as survey pipelines deliver them.
    """

    sky_level: ValueOrRange = 100.0  # ADU per pixel (paper: unstated); a range is drawn log-uniformly
    gain: float = 1.0  # electrons per ADU
    read_noise: float = 5.0  # electrons per pixel

    def __post_init__(self):
        _check_value_or_range(self.sky_level, "noise.sky_level", 0.0, 1e7)
        _check_range(self.gain, "noise.gain", 1e-3, 1e3)
        _check_range(self.read_noise, "noise.read_noise", 0.0, 1e4)


@dataclass(frozen=True)
class Ranges:
    """Closed ranges from which each galaxy parameter is drawn (Table 1 of the paper)."""

    flux: tuple[float, float] = (500.0, 50000.0)  # ADU
    half_light_radius: tuple[float, float] = (0.3, 5.0)  # arcsec
    sersic_n: tuple[float, float] = (0.5, 4.0)
    ellipticity: tuple[float, float] = (0.0, 0.6)
    position_angle: tuple[float, float] = (0.0, 180.0)  # deg
    x: tuple[float, float] = (0.0, 64.0)  # pixels, see galcae.params
    y: tuple[float, float] = (0.0, 64.0)

    def __post_init__(self):
        for name in SIMULATED:
            lo, hi = getattr(self, name)
            key = f"ranges.{name}"
            _check(lo <= hi, key, f"lower end {lo} is above upper end {hi}")
            bounds = PARAMETERS[name].bounds
            _check_range(lo, key, *bounds)
            _check_range(hi, key, *bounds)
        _check(self.flux[0] > 0 and self.half_light_radius[0] > 0, "ranges",
               "flux and half_light_radius must be positive")


@dataclass(frozen=True)
class Galaxy:
    """One galaxy's parameters; the values held fixed in a controlled sweep."""

    flux: float = 10000.0
    half_light_radius: float = 1.0
    sersic_n: float = 1.0
    ellipticity: float = 0.2
    position_angle: float = 45.0
    x: float = 32.0
    y: float = 32.0

    def __post_init__(self):
        for name in SIMULATED:
            _check_range(getattr(self, name), f"sweep.fixed.{name}", *PARAMETERS[name].bounds)


@dataclass(frozen=True)
class SweepConfig:
    """A controlled set (the paper's Fig. 3): one parameter swept, the others fixed.

    With ``parameter`` set, galaxy i takes the i-th of ``n_galaxies`` evenly spaced
    values over ``ranges.<parameter>``; the rest come from ``fixed``.
    """

    parameter: str | None = None  # None: every parameter drawn at random
    fixed: Galaxy = field(default_factory=Galaxy)

    def __post_init__(self):
        _check(self.parameter is None or self.parameter in SIMULATED, "sweep.parameter",
               f"'{self.parameter}' is not one of {', '.join(SIMULATED)}")


@dataclass(frozen=True)
class NeighbourConfig:
    """Another galaxy in some of the stamps, as survey cutouts hold them: what a network
    trained to measure the central galaxy with its neighbours masked must have seen. Its
    size, profile and shape are drawn from the same ranges as the galaxies'."""

    fraction: float = 0.0  # share of the stamps that hold one neighbour (0: none)
    distance: tuple[float, float] = (1.6, 5.0)  # arcsec from the galaxy's centre, uniform
    flux_ratio: tuple[float, float] = (0.1, 3.0)  # its flux over the galaxy's, log-uniform

    def __post_init__(self):
        _check_range(self.fraction, "neighbours.fraction", 0.0, 1.0)
        _check_value_or_range(self.distance, "neighbours.distance", 0.0, 1e3)
        _check_value_or_range(self.flux_ratio, "neighbours.flux_ratio", 1e-4, 1e4)


@dataclass(frozen=True)
class PopulationConfig:
    """Where the galaxies' shapes and fluxes come from (:mod:`galcae.population`).

    ``uniform``: each parameter drawn over its ``ranges``, independently (the paper's
    Table 1). ``cosmos``: Sérsic n, r½ and |g| drawn jointly from 276 real HST/COSMOS
    galaxies (smoothed, inside ``ranges``), flux with ``dN/dlnF ∝ F^-flux_slope`` inside
    ``ranges.flux``. Either way a ``bulge_fraction`` of the galaxies can be bulge + disk; their
    supervised parameters are those of the single-Sérsic fit of their noiseless image.
    """

    kind: str = "uniform"  # "uniform" or "cosmos"
    smoothing: float = 0.5  # cosmos: the kernel's width in units of Scott's bandwidth
    flux_slope: float = 0.0  # cosmos: dN/dlnF ∝ F^-flux_slope (0: log-uniform)
    bulge_fraction: float = 0.0  # share of bulge + disk galaxies (the disk an exponential)
    bulge_to_total: tuple[float, float] = (0.05, 0.7)  # the bulge's share of the flux, uniform
    bulge_size: tuple[float, float] = (0.1, 0.6)  # bulge r½ / disk r½, log-uniform
    bulge_sersic_n: tuple[float, float] = (2.5, 5.0)  # uniform
    bulge_ellipticity: tuple[float, float] = (0.0, 0.3)  # |g|, uniform
    bulge_misalignment: float = 20.0  # deg: the bulge's axis within ± this of the disk's

    def __post_init__(self):
        _check(self.kind in ("uniform", "cosmos"), "population.kind",
               f"'{self.kind}' is not one of 'uniform', 'cosmos'")
        _check_range(self.smoothing, "population.smoothing", 0.0, 10.0)
        _check_range(self.flux_slope, "population.flux_slope", -3.0, 3.0)
        _check(self.kind == "cosmos" or self.flux_slope == 0.0, "population.flux_slope",
               "needs population.kind: cosmos (a uniform population draws flux over ranges.flux)")
        _check_range(self.bulge_fraction, "population.bulge_fraction", 0.0, 1.0)
        _check_value_or_range(self.bulge_to_total, "population.bulge_to_total", 0.0, 1.0)
        _check_value_or_range(self.bulge_size, "population.bulge_size", 0.01, 10.0)
        _check_value_or_range(self.bulge_sersic_n, "population.bulge_sersic_n", *PARAMETERS["sersic_n"].bounds)
        _check_value_or_range(self.bulge_ellipticity, "population.bulge_ellipticity", 0.0, 0.9)
        _check_range(self.bulge_misalignment, "population.bulge_misalignment", 0.0, 90.0)


@dataclass(frozen=True)
class SimConfig:
    """Everything ``galcae simulate`` needs; the same config gives the same bytes."""

    n_galaxies: int = 1000
    seed: int = 1  # every random draw derives from this
    stamp_size: int = 64  # pixels per side
    pixel_scale: float = 0.2  # arcsec per pixel (LSST-like; the paper leaves it unstated)
    ranges: Ranges = field(default_factory=Ranges)
    log_uniform: tuple[str, ...] = ()  # parameters drawn uniformly in log10 rather than linearly
    psf: PSFConfig = field(default_factory=PSFConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    neighbours: NeighbourConfig = field(default_factory=NeighbourConfig)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    chunk_size: int = 128  # galaxies per parallel task and per Zarr chunk
    max_fft_size: int = 8192  # GalSim FFT cap: larger FFTs fail the galaxy (memory guard)

    def __post_init__(self):
        _check_range(self.n_galaxies, "n_galaxies", 1, 10**9)
        _check_range(self.seed, "seed", 0, 2**63 - 1)
        _check_range(self.stamp_size, "stamp_size", 8, 4096)
        _check_range(self.pixel_scale, "pixel_scale", 1e-3, 10.0)
        _check_range(self.chunk_size, "chunk_size", 1, 10**6)
        _check_range(self.max_fft_size, "max_fft_size", 256, 65536)
        for name in self.log_uniform:
            _check(name in ("flux", "half_light_radius", "sersic_n"), "log_uniform",
                   f"'{name}' cannot be drawn log-uniformly (flux, half_light_radius, sersic_n can)")
        _check(self.sweep.parameter is None or self.population.bulge_fraction == 0, "population.bulge_fraction",
               "a controlled sweep draws single Sérsics: set it to 0")

    def for_galaxy(self, row) -> "SimConfig":
        """This config with one galaxy's observing conditions fixed (its ``psf_fwhm``,
        ``psf_beta`` and ``sky_level`` columns): what rendering, fits and bounds of it use."""
        def value(name, current, key):
            if name in row:
                return float(row[name])
            _check(not isinstance(current, tuple), key, f"varies per galaxy; '{name}' is needed")
            return current

        psf = dataclasses.replace(self.psf, fwhm=value("psf_fwhm", self.psf.fwhm, "psf.fwhm"),
                                  beta=value("psf_beta", self.psf.beta, "psf.beta"))
        noise = dataclasses.replace(self.noise, sky_level=value("sky_level", self.noise.sky_level,
                                                                "noise.sky_level"))
        return dataclasses.replace(self, psf=psf, noise=noise)

    @property
    def varies_conditions(self) -> bool:
        """Whether the PSF or the sky level is drawn per galaxy."""
        return any(isinstance(v, tuple) for v in (self.psf.fwhm, self.psf.beta, self.noise.sky_level))


@dataclass(frozen=True)
class TrainConfig:
    """Training of the CAE (paper: Adam, 100 epochs, batch 64, 10:1 split)."""

    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3  # Adam; unstated in the paper
    # "cosine" decays the rate to zero over the epochs, so the last epoch's weights are not
    # caught mid-oscillation; "constant" keeps it fixed.
    lr_schedule: str = "cosine"
    lambda_phys: float = 10.0  # weight of the supervised-latent MSE (Eq. 4); unstated
    lambda_l1: float = 1e-3  # weight of the L1 penalty on residual latents (Eq. 5); unstated
    # Probability of zeroing a galaxy's residual latents at the decoder's input in training
    # (not in the paper; 0 = off): the decoder learns to render from the supervised ones.
    res_dropout: float = 0.0
    # The share of the epochs trained before res_dropout starts (0: from the first epoch), so
    # the decoder learns the shapes the free latents carry before it must do without them.
    res_dropout_from: float = 0.0
    # Drop each residual latent on its own (standard dropout) instead of a galaxy's all at once.
    res_dropout_each: bool = False
    test_fraction: float = 1.0 / 11.0  # the paper's 10:1 train:test split
    seed: int = 0  # split, initialisation and batch order
    latent_dim: int = 64  # supervised + residual latents
    supervised: tuple[str, ...] = ("flux", "half_light_radius")  # one latent axis each, in order
    # Targets standardised in log10, the others linearly (see configs/paper.yaml for why).
    log_scaled: tuple[str, ...] = ("half_light_radius",)
    # Random flips and 90-degree rotations of each batch: exact symmetries of the image
    # model (g1, g2, x and y targets are transformed with the image); multiplies small sets.
    augment: bool = True
    # Observing conditions fed to the network besides the image (psf_fwhm, psf_beta,
    # noise_sigma); none in the paper.
    conditions: tuple[str, ...] = ()
    # A Gaussian log-variance head per supervised parameter: per-galaxy errors at inference.
    predict_variance: bool = False
    # With a variance head, train the means by the beta-NLL (0 = likelihood weighting, which
    # favours well-measured galaxies; 1 = MSE-like) instead of the MSE; null keeps the MSE.
    nll_beta: float | None = None
    # Dropout on the encoder features (not in the paper); > 0 enables `galcae infer --samples K`.
    dropout: float = 0.0
    # Encoder convolution widths, one Conv-MaxPool-ReLU block each, mirrored by the decoder.
    channels: tuple[int, ...] = (32, 64)
    # A hidden Dense-ReLU layer of this width before the latent heads (0: the paper's linear heads).
    head_hidden: int = 0
    # "conv": the paper's decoder. "sersic": the supervised latents are drawn as the Sérsic
    # galaxy they describe, under the PSF of the conditions, plus a convolutional residual
    # from the free latents (needs all seven parameters and psf_fwhm, psf_beta).
    decoder: str = "conv"
    # The sersic decoder's residual branch: its widths, mirrored as `channels` are ([] = the
    # encoder's), and whether it sees the conditions too (then it runs twice a step, for its
    # zero point); and the FFT grid the galaxy is drawn on, in stamps per side.
    residual_channels: tuple[int, ...] = ()
    residual_conditions: bool = True
    decoder_grid: int = 4
    # Train each epoch on newly drawn galaxies (as many as the train split) instead of the
    # dataset's images: the dataset's priors and conditions, drawn by the PyTorch renderer
    # with the simulation's noise (galcae.fresh). The dataset still gives the preprocessing,
    # the held-out split, the test loss and the error model.
    fresh_galaxies: bool = False
    # Show the network its training stamps as galcae infer shows it a stamp: segmented, the
    # other sources' pixels replaced by sky noise (galcae.catalog.segment.neighbours_as_sky).
    # Needed for a training set with neighbours (simulate's `neighbours`).
    mask_neighbours: bool = False
    # With mask_neighbours, the share of training stamps given a detector defect (a bad
    # column, a saturated star, a cosmic ray; galcae.catalog.segment.bad_pixel_masks) that is
    # masked and filled as galcae infer fills a MASK HDU's pixels.
    bad_pixels: float = 0.0
    # The pixels' map into [0, 1] for the BCE: "asinh" (noise-level pixels linear, bright
    # cores compressed; galcae.scaling.PixelNormalization) or "linear" (one scale for all).
    pixel_stretch: str = "asinh"
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"

    def __post_init__(self):
        _check_range(self.epochs, "epochs", 1, 100000)
        _check(self.pixel_stretch in ("asinh", "linear"), "pixel_stretch",
               f"'{self.pixel_stretch}' is not one of 'asinh', 'linear'")
        _check_range(self.batch_size, "batch_size", 1, 65536)
        _check_range(self.learning_rate, "learning_rate", 1e-8, 1.0)
        _check(self.lr_schedule in ("cosine", "constant"), "lr_schedule",
               f"'{self.lr_schedule}' is not one of 'cosine', 'constant'")
        _check_range(self.lambda_phys, "lambda_phys", 0.0, 1e6)
        _check_range(self.lambda_l1, "lambda_l1", 0.0, 1e6)
        _check_range(self.res_dropout, "res_dropout", 0.0, 1.0)
        _check(0.0 <= self.res_dropout_from < 1.0, "res_dropout_from",
               f"{self.res_dropout_from} is not in [0, 1): the share of epochs before res_dropout starts")
        _check(0.0 < self.test_fraction < 1.0, "test_fraction",
               f"{self.test_fraction} is not strictly between 0 and 1")
        _check_range(self.latent_dim, "latent_dim", len(self.supervised) + 1, 4096)
        for name in self.supervised + self.log_scaled:
            _check(name in SUPERVISABLE, "supervised",
                   f"'{name}' is not one of {', '.join(SUPERVISABLE)}")
        _check(len(set(self.supervised)) == len(self.supervised), "supervised", "names a parameter twice")
        _check(set(self.log_scaled) <= set(self.supervised), "log_scaled",
               "names parameters that are not in 'supervised'")
        _check(not ("position_angle" in self.supervised and self.augment), "augment",
               "position_angle wraps at 180 deg: supervise g1, g2 instead, or set augment=false")
        for name in self.conditions:
            _check(name in MODEL_CONDITIONS, "conditions",
                   f"'{name}' is not one of {', '.join(MODEL_CONDITIONS)}")
        _check_range(self.dropout, "dropout", 0.0, 0.9)
        if self.nll_beta is not None:
            _check_range(self.nll_beta, "nll_beta", 0.0, 1.0)
            _check(self.predict_variance, "nll_beta", "needs predict_variance: true")
        _check(1 <= len(self.channels) <= 5, "channels", f"has {len(self.channels)} entries, not 1 to 5")
        for width in self.channels:
            _check_range(width, "channels", 1, 1024)
        _check_range(self.head_hidden, "head_hidden", 0, 65536)
        _check(len(self.residual_channels) <= 5, "residual_channels",
               f"has {len(self.residual_channels)} entries, not 1 to 5 (or none: the encoder's)")
        for width in self.residual_channels:
            _check_range(width, "residual_channels", 1, 1024)
        _check_range(self.decoder_grid, "decoder_grid", 2, 8)
        _check(self.decoder in DECODERS, "decoder",
               f"'{self.decoder}' is not one of {', '.join(repr(d) for d in DECODERS)}")
        if self.decoder == "sersic":
            # The PSF may be left out of the conditions when the training set has one PSF.
            missing = [n for n in FIT_PARAMETERS if n not in self.supervised]
            _check(not missing, "decoder", f"sersic draws from {', '.join(FIT_PARAMETERS)}: "
                   f"add {', '.join(missing)} to supervised")
            # Its residual is added in units of the stretch's softening, the sky noise for asinh.
            _check(self.pixel_stretch == "asinh", "pixel_stretch", "the sersic decoder needs 'asinh'")
        _check_range(self.bad_pixels, "bad_pixels", 0.0, 1.0)
        _check(self.bad_pixels == 0 or self.mask_neighbours, "bad_pixels", "needs mask_neighbours: true")
        for key in ("augment", "predict_variance", "fresh_galaxies", "mask_neighbours"):
            _check(isinstance(getattr(self, key), bool), key, f"{getattr(self, key)!r} is not true or false")
        _check(self.device in ("auto", "cpu", "cuda"), "device",
               f"'{self.device}' is not one of 'auto', 'cpu', 'cuda'")


#: Decoders a CAE can have: the paper's convolutional one, or the physical one (galcae.model).
DECODERS = ("conv", "sersic")
#: Parameters a model can be trained to predict.
SUPERVISABLE = SIMULATED + tuple(DERIVED)
#: Conditions a model can take (the sky level enters through the noise measured on the stamp).

STAGES = {"simulate": SimConfig, "train": TrainConfig}


# --- building dataclasses from plain data -------------------------------------------------


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from nested plain data, refusing unknown keys."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or cls.__name__}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        is_list = isinstance(value, (list, tuple))
        # A list goes to the tuple member of the union (a range), anything else to the other.
        hint = next((a for a in options if (typing.get_origin(a) is tuple) == is_list), options[0])
        return _coerce(hint, value, key)
    if origin is tuple:
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise ConfigError(f"config value '{key}': expected a list, got {value!r}")
        value = list(value)
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"config value '{key}': expected {len(args)} values, got {len(value)}")
        item = args[0] if args else object
        return tuple(_coerce(item, v, key) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config value '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config value '{key}': expected an integer, got {value!r}")
        return value
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"config value '{key}': expected a string, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    """Plain nested data (lists, not tuples) that :func:`from_dict` turns back into ``cfg``."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


# --- files, presets and overrides ----------------------------------------------------------


def _configs_dir():
    return resources.files("galcae").joinpath("configs")


def preset_names() -> list[str]:
    """Names of the configs shipped in ``galcae/configs``."""
    return sorted(p.name[:-5] for p in _configs_dir().iterdir()
                  if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str | Path) -> dict:
    """The raw mapping of a YAML config file, or of a shipped preset by name."""
    path = Path(name_or_path)
    # A file of that name wins; a directory (say ./survey holding a dataset) does not hide the preset.
    if not path.is_file() and str(name_or_path) in preset_names():
        data = read_yaml(_configs_dir().joinpath(f"{name_or_path}.yaml"), f"preset '{name_or_path}'")
        source = f"preset '{name_or_path}'"
    elif path.is_file():
        data = read_yaml(path)
        source = str(path)
    else:
        raise ConfigError(f"config '{name_or_path}' is neither a file nor a preset "
                          f"({', '.join(preset_names())})")
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of stage sections")
    unknown = set(data) - set(STAGES)
    if unknown:
        raise ConfigError(f"config {source}: unknown section '{sorted(unknown)[0]}' "
                          f"(sections are {', '.join(STAGES)})")
    return data


def read_yaml(path, source: str | None = None):
    """The data of a YAML file (``{}`` if empty), read with the safe loader: a tag that would
    build a Python object (``!!python/...``), bytes that are not UTF-8 text, or a syntax
    error is a :class:`ConfigError` naming the file, and nothing in it runs."""
    source = source or str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {source} is not a text (UTF-8) YAML file") from None
    except OSError as err:
        raise ConfigError(f"config {source} cannot be read ({err.strerror or err})") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {source} is not valid YAML: {str(err).splitlines()[0]}") from None


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested mapping copy."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override '{item}': value is not valid YAML") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return data


def load_stage(stage: str, config: str | Path | None = None, overrides=()):
    """The config of one stage from a preset or file (default: ``paper``) plus overrides."""
    data = read_config_file(config or "paper").get(stage) or {}
    return from_dict(STAGES[stage], apply_overrides(data, overrides))
