"""GalSim rendering of Sérsic galaxy stamps.

:func:`draw_parameters` turns a :class:`~galcae.config.SimConfig` into a parameter
table (one row per galaxy, with its own noise seed); :func:`render_chunk` renders any
slice of that table. Both are pure functions of their arguments, so the same config
gives the same bytes however the galaxies are split between workers.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import galsim
import numpy as np

from .config import ConfigError, SimConfig
from .params import FIT_PARAMETERS, OK, SIMULATED, ellipticity_from_shear, shear_from_ellipticity
from .physics import make_psf, optimal_snr, pixel_variance, render_noiseless
from .population import TOTAL_FLUX, draw_bulges, draw_flux, draw_shapes, has_bulge, single_sersic_equivalent

log = logging.getLogger(__name__)


def draw_parameters(cfg: SimConfig) -> dict[str, np.ndarray]:
    """The truth table of a simulation: every parameter of :data:`SIMULATED`, plus
    ``g1``, ``g2`` and the per-galaxy noise ``seed``."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_galaxies
    if cfg.sweep.parameter is not None:
        table = {}
        for name in SIMULATED:
            lo, hi = getattr(cfg.ranges, name)
            table[name] = (np.linspace(lo, hi, n) if name == cfg.sweep.parameter
                           else np.full(n, float(getattr(cfg.sweep.fixed, name))))
    else:
        table = _galaxies(rng, cfg, n)
    table["g1"], table["g2"] = shear_from_ellipticity(table["ellipticity"], table["position_angle"])
    # Drawn after the parameters so a sweep and a random set of one seed share noise seeds.
    table["seed"] = rng.integers(1, 2**62, size=n, dtype=np.int64)
    # Observing conditions last: a config with fixed ones draws exactly what it drew before.
    sweep = cfg.sweep.parameter is not None
    table["psf_fwhm"] = _condition(rng, cfg.psf.fwhm, n, log=False, fixed=sweep)
    table["psf_beta"] = _condition(rng, cfg.psf.beta, n, log=False, fixed=sweep)
    table["sky_level"] = _condition(rng, cfg.noise.sky_level, n, log=True, fixed=sweep)
    if cfg.population.bulge_fraction > 0:  # after the conditions: a config without bulges draws as before
        table.update(draw_bulges(rng, cfg.population, table))
        table[TOTAL_FLUX] = table["flux"].copy()
    if cfg.neighbours.fraction > 0:  # drawn last: a config without neighbours draws what it drew before
        table.update(_neighbours(rng, cfg, table))
    return table


def _galaxies(rng, cfg: SimConfig, n: int) -> dict[str, np.ndarray]:
    """The :data:`SIMULATED` parameters of ``n`` galaxies of the config's population: the flux
    over its range (or, ``cosmos``, from the counts' power law), the shape (:func:`_shapes`),
    the centre over its range."""
    table = {"flux": (_drawn(rng, cfg, "flux", n) if cfg.population.kind == "uniform"
                      else draw_flux(rng, n, cfg.ranges.flux, cfg.population.flux_slope))}
    table.update(_shapes(rng, cfg, n))
    for name in ("x", "y"):
        table[name] = _drawn(rng, cfg, name, n)
    return {name: table[name] for name in SIMULATED}


def _shapes(rng, cfg: SimConfig, n: int) -> dict[str, np.ndarray]:
    """Half-light radius, Sérsic n, ellipticity and position angle of ``n`` galaxies (or
    neighbours): each over its range, or (``cosmos``) the first three jointly from the COSMOS
    galaxies; the angle over its range."""
    if cfg.population.kind == "uniform":
        return {name: _drawn(rng, cfg, name, n)
                for name in ("half_light_radius", "sersic_n", "ellipticity", "position_angle")}
    return {**draw_shapes(rng, n, cfg.ranges, cfg.population.smoothing),
            "position_angle": _drawn(rng, cfg, "position_angle", n)}


#: The truth table's columns of a stamp's neighbour: ``nb_`` and the galaxy's parameter.
NEIGHBOUR_PREFIX = "nb_"


def _neighbours(rng, cfg: SimConfig, table: dict) -> dict[str, np.ndarray]:
    """One neighbour in a ``neighbours.fraction`` of the stamps (``nb_flux`` 0 in the others):
    its size, profile and shape drawn as the galaxies' are (a single Sérsic), its flux a log-uniform multiple of
    the galaxy's, its centre a uniform distance and direction from the galaxy's."""
    n, spec = len(table["flux"]), cfg.neighbours
    out = _shapes(rng, cfg, n)
    present = rng.random(n) < spec.fraction
    ratio = 10.0 ** rng.uniform(*np.log10(spec.flux_ratio), n)
    out["flux"] = np.where(present, table["flux"] * ratio, 0.0)
    distance, angle = rng.uniform(*spec.distance, n) / cfg.pixel_scale, rng.uniform(0, 2 * np.pi, n)
    out["x"], out["y"] = table["x"] + distance * np.cos(angle), table["y"] + distance * np.sin(angle)
    out["g1"], out["g2"] = shear_from_ellipticity(out["ellipticity"], out["position_angle"])
    return {NEIGHBOUR_PREFIX + k: v for k, v in out.items()}


def neighbour_row(row: dict) -> dict | None:
    """The neighbour of a truth table's row as a galaxy's row (its conditions the galaxy's),
    or None where the stamp has none."""
    if float(row.get(NEIGHBOUR_PREFIX + "flux", 0.0)) <= 0:
        return None
    return {**row, **{k.removeprefix(NEIGHBOUR_PREFIX): v for k, v in row.items() if k.startswith(NEIGHBOUR_PREFIX)}}


def _drawn(rng, cfg: SimConfig, name: str, n: int) -> np.ndarray:
    """``n`` values of parameter ``name`` over its range: log-uniform where ``log_uniform``
    says so, else uniform."""
    lo, hi = getattr(cfg.ranges, name)
    if name in cfg.log_uniform:
        return 10.0 ** rng.uniform(np.log10(lo), np.log10(hi), n)
    return rng.uniform(lo, hi, n)


def _condition(rng, value, n: int, log: bool, fixed: bool) -> np.ndarray:
    """One observing condition per galaxy: a fixed value, or drawn over its range (uniformly,
    or log-uniformly for the sky); a controlled sweep holds it at the range's middle."""
    if not isinstance(value, tuple):
        return np.full(n, float(value))
    lo, hi = value
    if fixed:
        return np.full(n, float(np.sqrt(lo * hi) if log else 0.5 * (lo + hi)))
    if log:
        return 10.0 ** rng.uniform(np.log10(lo), np.log10(hi), n)
    return rng.uniform(lo, hi, n)


def render_chunk(cfg: SimConfig, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Render the galaxies of a parameter-table slice with noise.

    Returns ``images`` (N, H, W float32, NaN where rendering failed), ``snr``,
    ``flux_in_stamp`` (fraction of the flux that falls on the stamp) and ``status``
    (``"ok"`` or the GalSim error, one line).
    """
    from threadpoolctl import threadpool_limits

    n = len(rows["seed"])
    size = cfg.stamp_size
    out = {
        "images": np.full((n, size, size), np.nan, dtype=np.float32),
        "snr": np.full(n, np.nan),
        "flux_in_stamp": np.full(n, np.nan),
        "status": np.full(n, OK, dtype=object),
    }
    bulges = {}  # row -> its noiseless image: a bulge + disk's supervised parameters come from it
    fixed = None if cfg.varies_conditions else cfg.for_galaxy({k: v[0] for k, v in rows.items()})
    psf = make_psf(fixed) if fixed else None
    with threadpool_limits(1), warnings.catch_warnings():
        # GalSim warns, then goes on, when an FFT exceeds maximum_fft_size: make it fail the
        # galaxy instead, since the cap is what keeps a worker's memory bounded.
        warnings.simplefilter("error", galsim.GalSimFFTSizeWarning)
        for i in range(n):
            row = {k: v[i] for k, v in rows.items()}
            galaxy_cfg = fixed or cfg.for_galaxy(row)
            noise = galaxy_cfg.noise
            try:
                image = render_noiseless(galaxy_cfg, row, psf)
                neighbour = neighbour_row(row)
                other = None if neighbour is None else render_noiseless(galaxy_cfg, neighbour, psf)
            except (galsim.GalSimError, galsim.GalSimFFTSizeWarning, MemoryError) as err:
                out["status"][i] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
                continue
            # The galaxy's own S/N and light, before its neighbour joins the image.
            out["snr"][i] = optimal_snr(image.array, pixel_variance(image.array, noise.sky_level, noise.gain,
                                                                     noise.read_noise))
            out["flux_in_stamp"][i] = image.array.sum() / row.get(TOTAL_FLUX, row["flux"])
            if has_bulge(row):
                bulges[i] = image.array.copy()
            if other is not None:
                image += other
            image.addNoise(galsim.CCDNoise(galsim.BaseDeviate(int(row["seed"])),
                                           sky_level=noise.sky_level, gain=noise.gain,
                                           read_noise=noise.read_noise))
            out["images"][i] = image.array
    if "bulge_to_total" in rows:
        out.update(_supervised_of_bulges(cfg, rows, bulges, out["status"]))
    out["status"] = out["status"].astype(str)
    return out


#: The columns :func:`render_chunk` gives anew for a population with bulges: a bulge + disk
#: galaxy's single-Sérsic equivalent (:func:`galcae.population.single_sersic_equivalent`).
EQUIVALENT_COLUMNS = (*FIT_PARAMETERS, "ellipticity", "position_angle")


def _supervised_of_bulges(cfg: SimConfig, rows: dict, bulges: dict, status: np.ndarray) -> dict:
    """:data:`EQUIVALENT_COLUMNS` of ``rows``: a single Sérsic's as drawn, a bulge + disk's
    (``bulges``: row -> noiseless image) from its single-Sérsic fit; a failed fit fails the row."""
    out = {k: np.array(rows[k], float) for k in EQUIVALENT_COLUMNS}
    if bulges:
        index = np.fromiter(bulges, int)
        fitted = single_sersic_equivalent(cfg, {k: np.asarray(v)[index] for k, v in rows.items()},
                                          np.stack([bulges[i] for i in index]))
        for name in FIT_PARAMETERS:
            out[name][index] = fitted[name]
        out["ellipticity"][index], out["position_angle"][index] = ellipticity_from_shear(fitted["g1"], fitted["g2"])
        failed = fitted["status"] != OK
        status[index[failed]] = fitted["status"][failed]
    return out


def simulate_dataset(cfg: SimConfig, out, *, workers: int = 1, scheduler: str | None = None,
                     overwrite: bool = False, protect=()):
    """Render ``cfg`` into a dataset directory ``out`` and return it opened.

    Parameters
    ----------
    cfg : SimConfig
        What to render; the per-galaxy seeds make the bytes independent of ``workers``.
    out : path
        Dataset directory to create (refused if it exists, unless ``overwrite``).
    workers : int
        Worker processes of a local Dask cluster; 1 renders in-process. [default: 1]
    scheduler : str, optional
        Address of an existing Dask scheduler to use instead.
    protect : paths, optional
        Inputs (the config file) that ``out`` must not overwrite.
    """
    from .dataset import Dataset
    from .outputs import atomic_directory, output_lock, refuse_overlap

    out = Path(out)
    refuse_overlap({"-o": out}, protect)
    check_feasible(cfg, out)
    with output_lock(out), atomic_directory(out, overwrite) as tmp:
        _render_into(tmp, cfg, workers, scheduler)
    return Dataset.open(out)


def _render_into(directory, cfg: SimConfig, workers: int, scheduler: str | None) -> None:
    from .dataset import create_image_array, write_params
    from .distributed import dask_client, map_chunks

    table = draw_parameters(cfg)
    starts = range(0, cfg.n_galaxies, cfg.chunk_size)
    slices = [slice(s, min(s + cfg.chunk_size, cfg.n_galaxies)) for s in starts]
    extra = {"snr": np.empty(cfg.n_galaxies), "flux_in_stamp": np.empty(cfg.n_galaxies),
             "status": np.empty(cfg.n_galaxies, dtype=object)}
    if "bulge_to_total" in table:  # a bulge + disk's supervised parameters come with its image
        extra.update({k: np.empty(cfg.n_galaxies) for k in EQUIVALENT_COLUMNS})
    images = create_image_array(directory, cfg)
    tasks = [(cfg, {k: v[s] for k, v in table.items()}) for s in slices]
    with dask_client(workers, scheduler) as client:
        for index, result in map_chunks(render_chunk, tasks, client, desc="simulate",
                                        unit_scale=[s.stop - s.start for s in slices]):
            images[slices[index]] = result.pop("images")
            for name, values in result.items():
                extra[name][slices[index]] = values
    extra["status"] = extra["status"].astype(str)
    failed = np.flatnonzero(extra["status"] != OK)
    if failed.size:
        log.warning("%d of %d galaxies could not be rendered (see the status column); "
                    "first: galaxy %d, %s", failed.size, cfg.n_galaxies, failed[0],
                    extra["status"][failed[0]])
    write_params(directory, {"id": np.arange(cfg.n_galaxies), **table, **extra}, cfg)


#: Driver memory per galaxy while simulating: the parameter table (about 15 float64
#: columns) and the status strings, with a margin.
TABLE_BYTES_PER_GALAXY = 400


def check_feasible(cfg: SimConfig, out: Path) -> None:
    """Refuse a simulation this machine cannot hold: its images on the disk of ``out`` (noise
    compresses little: 4 bytes a pixel) or its parameter table in the available memory."""
    import shutil

    import psutil

    parent = next(p for p in (out.resolve(), *out.resolve().parents) if p.exists())
    disk = cfg.n_galaxies * cfg.stamp_size**2 * 4
    free = shutil.disk_usage(parent).free
    if disk > free:
        raise ConfigError(f"n_galaxies={cfg.n_galaxies}: the images need about {_size(disk)} on disk; "
                          f"{parent} has {_size(free)} free")
    memory = cfg.n_galaxies * TABLE_BYTES_PER_GALAXY
    available = psutil.virtual_memory().available
    if memory > available / 2:
        raise ConfigError(f"n_galaxies={cfg.n_galaxies}: the parameter table needs about "
                          f"{_size(memory)} of memory; {_size(available)} is available")


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1024 or unit == "TB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
