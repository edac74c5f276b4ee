"""The model card: ``model.json`` read, validated and typed once.

A trained model on disk is ``model.safetensors`` (the weights) + ``model.json`` (everything
else). :class:`ModelCard` is that JSON as typed fields: the architecture, the pixel
normalisation, the parameter and condition scalings, the training set (its simulation
config, so refits use the same physics), the error model, the refinement policy and the
provenance. The library reads models through it, and resolves every model-dependent
default here (:meth:`ModelCard.refine_snr_for`), so the command line, the Python API and
``evaluate`` behave alike. Models shipped with galcae are found by name
(:func:`resolve_model`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .config import SimConfig, from_dict
from .errors import ModelError
from .model import Architecture
from .scaling import ParameterScaling, PixelNormalization
from .uncertainty import HeldoutScatter, VarianceCalibration

WEIGHTS = "model.safetensors"
META = "model.json"
#: The schema of ``model.json``; its number changes when a reader of the old one would misread it.
FORMAT = "galcae-model/1"
#: Sections every ``model.json`` has (``dataset``: the training set's provenance and config).
SECTIONS = ("architecture", "normalization", "parameter_scaling", "dataset")
#: The package that holds the shipped models, one directory each.
SHIPPED = "galcae.models"
#: ``refine_snr`` meaning "as the model card says" (the default of every entry point).
MODEL_DEFAULT = "model"


@dataclass(frozen=True)
class Refinement:
    """When the classical fit re-measures the CAE's estimates, and how its errors are rescaled."""

    min_snr: float | None = None  # refine stamps at least this bright by default; None: never
    calibration: VarianceCalibration | None = None  # of the refined rows' errors
    # The model-error floor of the refined rows' errors, per parameter (a fraction of the
    # value for flux, half_light_radius and sersic_n; in the parameter's units for the
    # others): galcae.estimate.refine, "Errors when the model does not fit".
    model_error: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ErrorModel:
    """Where a model's errors come from: its variance head, recalibrated on held-out
    simulations, or (models without a head) the held-out residual scatter."""

    variance: VarianceCalibration | None = None
    heldout: HeldoutScatter | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a model came from: its training set, its starting model and, for a shipped one,
    the card's sentences (what it is, what it was trained on by command, where it was
    validated, where it must not be trusted)."""

    dataset: str  # the training set's path when it was trained
    n_galaxies: int
    params_sha256: str  # of the training set's params.parquet
    init: dict = field(default_factory=dict, hash=False)  # --init: the starting model and its epochs
    shipped: dict = field(default_factory=dict, hash=False)  # name, weights precision, card sentences

    @classmethod
    def from_meta(cls, meta: dict) -> "Provenance":
        dataset = meta["dataset"]
        return cls(str(dataset.get("path", "?")), int(dataset.get("n_galaxies", 0)),
                   str(dataset.get("params_sha256", "")), dict(meta.get("init") or {}),
                   dict(meta.get("shipped") or {}))


@dataclass(frozen=True)
class ModelCard:
    """Everything about a model but its weights; see the module docstring."""

    architecture: Architecture
    normalization: PixelNormalization
    parameter_scaling: ParameterScaling
    condition_scaling: ParameterScaling | None
    training_set: SimConfig  # the simulation the model was trained on: stamp, pixels, PSF, noise
    training_range: dict = field(hash=False)  # name -> (lo, hi) of the training truths and conditions
    errors: ErrorModel
    refinement: Refinement
    provenance: Provenance
    weights_sha256: str
    galcae_version: str = "?"
    raw: dict = field(default_factory=dict, repr=False, compare=False)  # model.json as read

    @property
    def pixel_scale(self) -> float:
        return self.training_set.pixel_scale

    @property
    def stamp_size(self) -> int:
        return self.architecture.stamp_size

    def refine_snr_for(self, requested) -> float | None:
        """The S/N above which to refine: ``requested`` (a number, or None for never), or for
        :data:`MODEL_DEFAULT` the card's policy (None for a model without a refine calibration)."""
        return self.refinement.min_snr if requested == MODEL_DEFAULT else requested

    @classmethod
    def from_dict(cls, meta: dict, where: str = "model.json") -> "ModelCard":
        """The card of a parsed ``model.json``; a :class:`ModelError` naming ``where`` if it is not one."""
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelError(f"{where} is not a galcae model description (format != {FORMAT!r})")
        missing = [key for key in SECTIONS if not isinstance(meta.get(key), dict)]
        if missing:
            raise ModelError(f"{where}: no '{missing[0]}' section; not a complete galcae model description")
        try:
            architecture = Architecture.from_dict(meta["architecture"])
            conditioning = (ParameterScaling.from_dict(meta["condition_scaling"])
                            if "condition_scaling" in meta else None)
            if len(conditioning.names if conditioning else ()) != architecture.n_conditions:
                raise ValueError("condition_scaling does not match the architecture's n_conditions")
            scaling = ParameterScaling.from_dict(meta["parameter_scaling"])
            return cls(
                architecture=architecture,
                normalization=PixelNormalization(**meta["normalization"]),
                parameter_scaling=scaling,
                condition_scaling=conditioning,
                training_set=from_dict(SimConfig, meta["dataset"].get("simulate"), "dataset.simulate."),
                training_range={k: tuple(v) for k, v in meta.get("training_range", {}).items()},
                errors=ErrorModel(
                    variance=(VarianceCalibration.from_meta(meta, len(scaling.names))
                              if architecture.predict_variance else None),
                    heldout=(HeldoutScatter.from_dict(meta["heldout_scatter"])
                             if "heldout_scatter" in meta else None)),
                refinement=Refinement(
                    min_snr=(float(meta["refine_calibration_set"]["min_snr"])
                             if "refine_calibration" in meta else None),
                    calibration=(VarianceCalibration.from_dict(meta["refine_calibration"])
                                 if "refine_calibration" in meta else None),
                    model_error=_model_error(meta.get("refine_model_error"))),
                provenance=Provenance.from_meta(meta),
                weights_sha256=str(meta.get("weights_sha256", "")),
                galcae_version=str(meta.get("galcae_version", "?")),
                raw=meta)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ModelError(f"{where}: cannot rebuild the model ({first})") from None


def read_card(meta_path: Path) -> ModelCard:
    """The card of ``model.json`` at ``meta_path``, validated."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise ModelError(f"model file {meta_path} does not exist")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{meta_path} is not valid JSON ({err})") from None
    return ModelCard.from_dict(meta, str(meta_path))


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, meta)`` of a model given by name (shipped), run directory or either file."""
    path = Path(path)
    bare_name = len(path.parts) == 1 and not path.suffix and not path.exists()
    if str(path) in shipped_models() or bare_name:  # a bare name that is no file names a shipped model
        path = resolve_model(path)
    if path.is_dir():
        return path / WEIGHTS, path / META
    if path.suffix == ".json":
        return path.with_name(WEIGHTS), path
    return path, path.with_name(META)


def shipped_models() -> list[str]:
    """Names of the models shipped in the package."""
    root = resources.files(SHIPPED)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath(META).is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A model path as given, or the directory of the shipped model of that name."""
    path = Path(name_or_path)
    # A model file or run directory wins; any other directory (say ./survey holding a
    # dataset) does not hide the shipped model of that name.
    holds_model = path.is_file() or (path / META).is_file()
    if not holds_model and str(name_or_path) in shipped_models():
        return Path(str(resources.files(SHIPPED).joinpath(str(name_or_path))))
    if path.exists():
        return path
    raise ModelError(f"model '{name_or_path}' is neither a path nor a shipped model "
                     f"({', '.join(shipped_models()) or 'none installed'})")


def _model_error(section) -> dict:
    """``refine_model_error.floors`` of ``model.json``: ``{parameter: floor >= 0}``."""
    from .params import FIT_PARAMETERS

    if section is None:
        return {}
    floors = section.get("floors") if isinstance(section, dict) else None
    if not isinstance(floors, dict) or not all(
            name in FIT_PARAMETERS and isinstance(v, (int, float)) and 0 <= v < float("inf")
            for name, v in floors.items()):
        raise ValueError("refine_model_error.floors: a non-negative number per fitted parameter "
                         f"({', '.join(FIT_PARAMETERS)})")
    return {name: float(v) for name, v in floors.items()}
