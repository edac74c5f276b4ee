"""Training of the CAE: one visible loop, a checkpoint every epoch, resumable.

A run directory holds ``model.safetensors`` + ``model.json`` (see :mod:`galcae.checkpoint`),
``split.json`` (train/test galaxy ids), ``history.json`` (losses per epoch),
``state.safetensors`` (optimizer and batch-order state for ``--resume``: tensors and JSON,
never a pickle) and ``loss.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import (
    META,
    ModelError,
    TrainedModel,
    load_model,
    load_state,
    pick_device,
    save_model,
    save_state,
    sha256_of,
    write_json_atomic,
)
from .conditions import condition_table
from .config import ConfigError, TrainConfig, from_dict, to_dict
from .dataset import PARAMS, Dataset
from .errors import TrainingError
from .fresh import CHUNK as FRESH_CHUNK
from .fresh import FreshGalaxies, epoch_seed
from .model import CAE, DECODER_FIELDS, Architecture, cae_loss
from .outputs import output_lock, refuse_overlap, remove, swap_in
from .params import ellipticity_from_shear
from .physics import sky_sigma
from .plots import loss_curve
from .scaling import ParameterScaling, PixelNormalization
from .uncertainty import HeldoutScatter, VarianceCalibration

log = logging.getLogger(__name__)

SPLIT = "split.json"
HISTORY = "history.json"
STATE = "state.safetensors"
LEGACY_STATE = "state.pt"


def split_indices(dataset: Dataset, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) ids of the rendered galaxies, a seeded random split."""
    usable = dataset.usable
    order = np.random.default_rng(cfg.seed).permutation(usable)
    n_test = max(1, int(round(len(usable) * cfg.test_fraction)))
    if len(usable) - n_test < 1:
        raise ConfigError(f"dataset {dataset.path} has {len(usable)} usable galaxies: "
                          "too few to split into train and test")
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def noise_sigma(dataset: Dataset, ids=None) -> float:
    """Median sky-noise sigma in ADU of the dataset's galaxies (all of them, or ``ids``)."""
    n = dataset.config.noise
    sky = dataset.params["sky_level"] if ids is None else dataset.params["sky_level"][ids]
    return float(np.median(sky_sigma(sky, n.gain, n.read_noise)))


def conditioning_inputs(dataset: Dataset, images: np.ndarray, names, ids=None) -> dict:
    """The ``names`` conditions of the galaxies ``ids`` (all when None) whose ``images`` are
    given: PSF from the truth table, noise measured on the stamp (as inference measures it)."""
    if "psf_beta" in names and dataset.config.psf.profile != "moffat":
        raise ConfigError(f"conditions: psf_beta needs a Moffat PSF; {dataset.path} has "
                          f"a {dataset.config.psf.profile} one")
    rows = slice(None) if ids is None else ids
    given = {n: dataset.params[n][rows] for n in names if n in dataset.params}
    return condition_table(names, images, given)


def provenance(dataset: Dataset) -> dict:
    return {"path": str(dataset.path.resolve()), "n_galaxies": len(dataset),
            "params_sha256": sha256_of(dataset.path / PARAMS), "simulate": to_dict(dataset.config)}


def _check_resume(run_dir: Path, cfg: TrainConfig, dataset: Dataset) -> None:
    meta = json.loads((run_dir / META).read_text())
    # Through TrainConfig, so keys added since the run was saved compare at their defaults.
    saved = to_dict(from_dict(TrainConfig, meta.get("train_config", {})))
    new = to_dict(cfg)
    differs = _differing_keys(saved, new)
    if differs:
        raise ConfigError(f"--resume: config of {run_dir} differs in {', '.join(differs)} "
                          f"(saved {differs[0]}={saved.get(differs[0])!r}, now {new.get(differs[0])!r})")
    if meta["dataset"]["params_sha256"] != sha256_of(dataset.path / PARAMS):
        raise ConfigError(f"--resume: {dataset.path} is not the dataset {run_dir} was trained on "
                          f"({meta['dataset']['path']})")


def _differing_keys(a: dict, b: dict) -> list[str]:
    """Keys whose values differ between two dicts (a missing key counts as None), sorted."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def train_model(dataset_path, run_dir, cfg: TrainConfig | None = None, *, resume: bool = False,
                overwrite: bool = False, init=None) -> TrainedModel:
    """Train the CAE on a dataset and write the run directory; return the final model.

    Parameters
    ----------
    dataset_path : path
        A dataset written by ``galcae simulate``.
    run_dir : path
        Output directory; refused if it already holds a model, unless ``resume`` or ``overwrite``.
        It is locked while training. With ``overwrite``, the new run is trained beside it
        (``.RUN.new``, which ``resume`` continues) and replaces it only when finished.
    cfg : TrainConfig
        Hyper-parameters [default: the paper's].
    resume : bool
        Continue an interrupted run from its last finished epoch (the config must match).
    init : path or shipped model name, optional
        Start from this model's weights and preprocessing (fine-tuning) instead of a random
        initialisation; its architecture and supervised parameters must match ``cfg``, but
        for the decoder: with another one, only the encoder's weights are taken.
    """
    cfg = cfg or TrainConfig()
    dataset = Dataset.open(dataset_path)
    run_dir = Path(run_dir)
    if resume and init is not None:
        raise ConfigError("--init: a resumed run continues from its own weights; drop --init or --resume")
    inputs = [dataset.path, *([init] if init is not None and Path(init).exists() else [])]
    refuse_overlap({"-o": run_dir}, inputs)
    with output_lock(run_dir):
        target = _target_directory(run_dir, resume, overwrite)
        model = _train_into(target, dataset, cfg, resume=resume, init=init)
        if target != run_dir:
            swap_in(target, run_dir)
    return model


def staging_directory(run_dir: Path) -> Path:
    """Where ``--overwrite`` trains a run before it replaces the old one."""
    return run_dir.parent / f".{run_dir.name}.new"


def _target_directory(run_dir: Path, resume: bool, overwrite: bool) -> Path:
    """The directory to train in: ``run_dir``, or its staging twin when replacing a model."""
    staging = staging_directory(run_dir)
    has_model = (run_dir / META).exists()
    if resume:
        if (staging / META).exists():  # an interrupted --overwrite
            return staging
        if not has_model:
            raise FileNotFoundError(f"--resume: {run_dir} holds no model to resume")
        return run_dir
    if has_model and not overwrite:
        raise FileExistsError(f"run directory {run_dir} already holds a model; "
                              "pass --resume to continue it or --overwrite to replace it")
    remove(staging)
    return staging if has_model else run_dir


def _train_into(run_dir: Path, dataset: Dataset, cfg: TrainConfig, *, resume: bool, init) -> TrainedModel:
    """The training itself, in ``run_dir`` (see :func:`train_model`)."""
    if resume:
        _check_resume(run_dir, cfg, dataset)
    run = prepare_training(dataset, cfg, run_dir, resume=resume, init=init)
    data, model, tensors = run.data, run.model, run.tensors
    history, start = _resume_loop(run_dir, run.optimizer, run.batch_order) if resume else ([], 0)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / SPLIT, {"train": data.train_ids.tolist(), "test": data.test_ids.tolist()})
    bar = tqdm(range(start, cfg.epochs), desc="train", unit="epoch", disable=None, initial=start, total=cfg.epochs)
    for epoch in bar:
        record = run.epoch(epoch, run_dir)
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", test=f"{record['test_loss']:.4f}")
        log.info("epoch %d: loss %.5f test %.5f (%.0f img/s)", epoch + 1, record["loss"],
                 record["test_loss"], record["images_per_second"])
        model.meta["epoch"] = epoch + 1
        save_model(run_dir, model)
        write_json_atomic(run_dir / HISTORY, history)
        save_state(run_dir / STATE, {"optimizer": run.optimizer.state_dict(),
                                     "batch_order": run.batch_order.get_state(), "epoch": epoch + 1})
    model.meta.update(error_model(model, data.images[data.test_ids], tensors.y[0][data.test_ids].cpu().numpy(),
                                  {n: data.train_params[n] for n in cfg.supervised},
                                  {n: v[data.test_ids] for n, v in data.conditions.items()},
                                  {n: v[data.train_ids] for n, v in data.conditions.items()}))
    save_model(run_dir, model)
    loss_curve(history, run_dir / "loss.png")
    return model


def prepare_training(dataset: Dataset, cfg: TrainConfig, run_dir: Path | None = None, *,
                     resume: bool = False, init=None) -> "Training":
    """Everything a run trains with, before its first epoch: the data, the network (seeded,
    or a resumed run's or an ``--init`` model's weights), the optimizer and the batch order
    (a resumed run's are restored by :func:`_resume_loop`). ``benchmarks/training_speed.py``
    times its :meth:`Training.epoch`."""
    _check_stamp_size(dataset, cfg)
    _check_fresh(dataset, cfg)
    _check_decoder_psf(dataset, cfg)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)  # before the network is built: its initial weights
    data = _training_data(dataset, cfg)
    network = CAE(_architecture(dataset, cfg)).to(device, memory_format=torch.channels_last)
    model = _starting_model(run_dir, dataset, cfg, data, network, device, resume, init)
    return Training(cfg, data, model, _tensors(model, dataset, cfg, data),
                    torch.optim.Adam(network.parameters(), lr=cfg.learning_rate),
                    torch.Generator().manual_seed(cfg.seed),
                    FreshGalaxies(dataset.config, device, mask_neighbours=cfg.mask_neighbours,
                                  bad_pixels=cfg.bad_pixels)
                    if cfg.fresh_galaxies else None)


@dataclass
class TrainingData:
    """A dataset as training sees it: the split, the images and the truths of the train split."""

    train_ids: np.ndarray
    test_ids: np.ndarray
    images: np.ndarray
    train_params: dict
    conditions: dict  # the conditions the model takes, of every galaxy


@dataclass
class Tensors:
    """Network inputs and targets of every galaxy, on the training device."""

    x: torch.Tensor  # normalised images
    y: torch.Tensor  # latent targets, one table per flip/rotation
    c: torch.Tensor | None  # standardised conditions
    terms: dict  # the loss's weights


@dataclass
class Training:
    """A run ready to train: its data, model and tensors, optimizer, batch order and, with
    ``fresh_galaxies``, the source of each epoch's new galaxies."""

    cfg: TrainConfig
    data: TrainingData
    model: TrainedModel
    tensors: Tensors
    optimizer: torch.optim.Optimizer
    batch_order: torch.Generator
    fresh: FreshGalaxies | None

    def epoch(self, epoch: int, run_dir: Path | None = None) -> dict:
        """Train the 0-based ``epoch``: the train split's galaxies, or as many fresh ones."""
        cfg, data = self.cfg, self.data
        batches = (_fresh_batches(self.fresh, self.model, cfg, len(data.train_ids), epoch) if self.fresh
                   else _dataset_batches(self.tensors, data.train_ids, self.batch_order, cfg.batch_size))
        return _train_epoch(self.model.network, self.optimizer, self.batch_order, batches, self.tensors,
                            data.test_ids, cfg, epoch, run_dir)


def _check_stamp_size(dataset: Dataset, cfg: TrainConfig) -> None:
    for key, widths in (("channels", cfg.channels), ("residual_channels", cfg.residual_channels)):
        reduction = 2 ** len(widths)
        if dataset.config.stamp_size % reduction:
            raise ConfigError(f"dataset {dataset.path}: stamp_size {dataset.config.stamp_size} "
                              f"is not divisible by {reduction}, as the {len(widths)} {key} need")


def _check_decoder_psf(dataset: Dataset, cfg: TrainConfig) -> None:
    """The sersic decoder draws through the PSF: a condition, or the dataset's only one."""
    if cfg.decoder == "sersic":
        from .render import training_psf

        try:
            training_psf(to_dict(dataset.config), tuple(cfg.conditions))
        except ValueError as err:
            raise ConfigError(f"decoder: dataset {dataset.path}: {err}") from None


def _check_fresh(dataset: Dataset, cfg: TrainConfig) -> None:
    if cfg.fresh_galaxies and dataset.config.sweep.parameter is not None:
        raise ConfigError(f"fresh_galaxies: dataset {dataset.path} is a sweep of "
                          f"{dataset.config.sweep.parameter}, not random galaxies to draw more of")
    if cfg.fresh_galaxies and dataset.config.population.bulge_fraction > 0:
        raise ConfigError(f"fresh_galaxies: dataset {dataset.path} has bulge + disk galaxies "
                          "(population.bulge_fraction), which the PyTorch renderer does not draw; "
                          "train on the dataset's images")


#: The random stream of the sky noise that replaces a dataset's masked pixels.
MASK_STREAM = 7


def as_the_model_saw_them(model: TrainedModel, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stamps, in place, as a model trained with ``mask_neighbours`` saw its training stamps
    (segmented, the other sources' pixels sky noise; no detector defects): what its error
    model and its evaluation must be measured on. Others are returned as they are."""
    if model.card.raw.get("train_config", {}).get("mask_neighbours"):
        from .catalog.segment import neighbours_as_sky

        neighbours_as_sky(images, rng)
    return images


def _training_data(dataset: Dataset, cfg: TrainConfig) -> TrainingData:
    """The split, the images (checked finite) and the conditions of a dataset."""
    train_ids, test_ids = split_indices(dataset, cfg)
    dataset.check_finite([*cfg.supervised, *(c for c in cfg.conditions if c != "noise_sigma")],
                         dataset.usable)
    images = dataset.load_images()
    dataset.check_finite_images(images, np.arange(len(dataset)))
    conditions = conditioning_inputs(dataset, images, cfg.conditions)  # measured as read, as infer does
    if cfg.mask_neighbours:
        from .catalog.segment import neighbours_as_sky

        neighbours_as_sky(images, np.random.default_rng([cfg.seed, MASK_STREAM]), cfg.bad_pixels)
    return TrainingData(train_ids, test_ids, images, {k: v[train_ids] for k, v in dataset.params.items()},
                        conditions)


def _architecture(dataset: Dataset, cfg: TrainConfig) -> Architecture:
    return Architecture(stamp_size=dataset.config.stamp_size, latent_dim=cfg.latent_dim,
                        n_supervised=len(cfg.supervised), dropout=cfg.dropout,
                        n_conditions=len(cfg.conditions), predict_variance=cfg.predict_variance,
                        channels=tuple(cfg.channels), head_hidden=cfg.head_hidden, decoder=cfg.decoder,
                        residual_channels=tuple(cfg.residual_channels),
                        residual_conditions=cfg.residual_conditions, decoder_grid=cfg.decoder_grid)


def _starting_model(run_dir: Path, dataset: Dataset, cfg: TrainConfig, data: TrainingData, network: CAE,
                    device, resume: bool, init) -> TrainedModel:
    """The model training starts from: a resumed run's weights and preprocessing, an ``--init``
    model's (fine-tuning), or the fresh network with preprocessing fitted on the train split."""
    meta = {"train_config": to_dict(cfg), "dataset": provenance(dataset), "epoch": 0}
    if resume:  # the preprocessing the run started with (a fine-tuned one's came from --init)
        saved = load_model(run_dir, device=str(device.type))
        network.load_state_dict(saved.network.state_dict())
        meta.update({k: saved.meta[k] for k in ("init",) if k in saved.meta})
        return TrainedModel(network, saved.normalization, saved.scaling, meta, saved.conditioning)
    if init is not None:
        initial = _initial_model(init, network.arch, cfg, device)
        weights = initial.network.state_dict()
        changed = network.arch.decoder_differences(initial.network.arch)
        if changed:  # a new decoder: the encoder's weights only
            weights = {k: v for k, v in weights.items() if not k.startswith("decoder.")}
            log.info("--init: %s has a %s decoder; its encoder starts a %s one (differing: %s)", init,
                     initial.network.arch.decoder, network.arch.decoder, ", ".join(changed))
        network.load_state_dict(weights, strict=not changed)
        meta["init"] = {"model": str(init), "epoch": initial.epochs_trained,
                        "dataset": initial.meta.get("dataset", {}).get("path")}
        return TrainedModel(network, initial.normalization, initial.scaling, meta, initial.conditioning)
    train = data.train_ids
    conditioning = (ParameterScaling.fit({k: v[train] for k, v in data.conditions.items()},
                                         cfg.conditions, ("noise_sigma",)) if cfg.conditions else None)
    return TrainedModel(network, PixelNormalization.fit(data.images[train], noise_sigma(dataset, train),
                                                        cfg.pixel_stretch),
                        ParameterScaling.fit(data.train_params, cfg.supervised, cfg.log_scaled), meta,
                        conditioning)


def _tensors(model: TrainedModel, dataset: Dataset, cfg: TrainConfig, data: TrainingData) -> Tensors:
    terms = {"lambda_phys": cfg.lambda_phys, "lambda_l1": cfg.lambda_l1, "nll_beta": cfg.nll_beta}
    return Tensors(model.to_input(data.images), _targets(model, dataset.params, cfg),
                   _condition_tensor(model, data.conditions), terms)


def _targets(model: TrainedModel, table: dict, cfg: TrainConfig) -> torch.Tensor:
    """``(8 or 1, N, n_supervised)`` latent targets of a truth table: one table per
    flip/rotation, so the augmented image keeps matching its truth."""
    size = model.network.arch.stamp_size
    return torch.stack([torch.as_tensor(model.scaling.to_latent(dihedral_params(table, k, size)))
                        for k in range(8 if cfg.augment else 1)]).to(model.device)


def _condition_tensor(model: TrainedModel, conditions: dict) -> torch.Tensor | None:
    """The standardised conditions the network takes, on its device (None without any)."""
    if not model.conditioning:
        return None
    return torch.as_tensor(model.conditioning.to_latent(conditions), device=model.device)


def _dataset_batches(tensors: Tensors, ids: np.ndarray, batch_order: torch.Generator, batch_size: int):
    """The galaxies ``ids`` in a seeded order, ``batch_size`` at a time: ``(x, y per
    flip/rotation, c, where)``, ``where`` naming the batch in an error."""
    order = torch.as_tensor(ids)[torch.randperm(len(ids), generator=batch_order)]
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size].to(tensors.x.device)
        yield (tensors.x[batch], tensors.y[:, batch], None if tensors.c is None else tensors.c[batch],
               f"galaxy {int(batch[0])}")


def _fresh_batches(fresh: FreshGalaxies, model: TrainedModel, cfg: TrainConfig, n: int, epoch: int):
    """``n`` new galaxies for ``epoch`` (:mod:`galcae.fresh`), as :func:`_dataset_batches`
    gives a dataset's, through the same preprocessing; already in random order."""
    chunk = cfg.batch_size * max(1, FRESH_CHUNK // cfg.batch_size)  # batches never straddle two chunks
    start = 0
    for rows, images, conditions in fresh.epoch(n, epoch_seed(cfg.seed, epoch), cfg.conditions, chunk):
        x, y, c = model.to_input(images), _targets(model, rows, cfg), _condition_tensor(model, conditions)
        for i in range(0, len(x), cfg.batch_size):
            part = slice(i, i + cfg.batch_size)
            yield x[part], y[:, part], None if c is None else c[part], f"fresh galaxy {start + i} of the epoch"
        start += len(x)


def _resume_loop(run_dir: Path, optimizer, batch_order: torch.Generator) -> tuple[list, int]:
    """Restore an interrupted run's optimizer and batch order; its history and next epoch."""
    state = read_state(run_dir)
    optimizer.load_state_dict(state["optimizer"])
    batch_order.set_state(state["batch_order"])
    log.info("resuming %s at epoch %d", run_dir, state["epoch"] + 1)
    return json.loads((run_dir / HISTORY).read_text()), state["epoch"]


def _train_epoch(network: CAE, optimizer, batch_order: torch.Generator, batches, tensors: Tensors,
                 test_ids: np.ndarray, cfg: TrainConfig, epoch: int, run_dir: Path) -> dict:
    """One pass over ``batches`` (:func:`_dataset_batches` or :func:`_fresh_batches`), each
    flipped/rotated by a seeded draw; the epoch's losses, test losses and speed."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, epoch)
    network.train()
    sums, seen, t0 = {}, 0, time.perf_counter()
    for x, y, c, where in batches:
        k = 0
        if cfg.augment:
            k = int(torch.randint(8, (), generator=batch_order))
            x = dihedral(x, k)
        loss, parts = cae_loss(network, x, y[k], **tensors.terms, c=c,
                               res_dropout=residual_dropout(cfg, epoch), res_dropout_each=cfg.res_dropout_each)
        if not math.isfinite(parts["loss"]):
            raise TrainingError(f"epoch {epoch + 1}: the loss is {parts['loss']} on the batch "
                                f"starting at {where}; stopped (the last finished "
                                f"epoch's model, if any, stays in {run_dir})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value * len(x)
        seen += len(x)
    seconds = time.perf_counter() - t0
    test = _evaluate_loss(network, tensors.x, tensors.y[0], tensors.c, test_ids, tensors.terms)
    return {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()},
            **{f"test_{k}": v for k, v in test.items()},
            "seconds": seconds, "images_per_second": seen / seconds}


def read_state(run_dir: Path) -> dict:
    """The optimizer and batch-order state of an interrupted run. Runs written before galcae
    kept it in safetensors have a ``state.pt``, read with ``weights_only`` (tensors and plain
    values only: a pickle that would run code is refused)."""
    if (run_dir / STATE).exists() or not (run_dir / LEGACY_STATE).exists():
        return load_state(run_dir / STATE)
    try:
        return torch.load(run_dir / LEGACY_STATE, weights_only=True)
    except Exception as err:  # pickle raises many types; none of them may run code here
        raise ModelError(f"{run_dir / LEGACY_STATE} cannot be read safely ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def _initial_model(init, arch: Architecture, cfg: TrainConfig, device) -> TrainedModel:
    """The ``--init`` model, checked to be the network ``cfg`` describes."""
    start = load_model(init, device=str(device.type))
    theirs, ours = start.network.arch.to_dict(), arch.to_dict()
    differs = [k for k in _differing_keys(theirs, ours) if k not in DECODER_FIELDS]  # an encoder can change decoder
    if differs:
        raise ConfigError(f"--init: {init} is a different network ({differs[0]}: {theirs.get(differs[0])!r}, "
                          f"the config has {ours[differs[0]]!r})")
    for key, have, want in (("supervised", start.supervised, tuple(cfg.supervised)),
                            ("log_scaled", tuple(n for n, lg in zip(start.scaling.names, start.scaling.log) if lg),
                             tuple(n for n in cfg.supervised if n in cfg.log_scaled)),
                            ("conditions", start.conditions, tuple(cfg.conditions))):
        if have != want:
            raise ConfigError(f"--init: {init} has {key} {list(have)}, the config {list(want)}")
    return start


def error_model(model: TrainedModel, test_images: np.ndarray, test_targets: np.ndarray,
                train_truth: dict[str, np.ndarray], test_conditions: dict | None = None,
                train_conditions: dict | None = None) -> dict:
    """What inference needs to qualify its answers: the held-out residual scatter (the
    ``heldout`` ``_err``) and the range of each supervised parameter and condition seen
    in training."""
    n_sup = len(model.supervised)
    ranges = {n: [float(np.min(v)), float(np.max(v))]
              for n, v in {**train_truth, **(train_conditions or {})}.items()}
    head = model.network.arch.predict_variance
    z, log_var = (model.encode(test_images, test_conditions, log_var=True) if head
                  else (model.encode(test_images, test_conditions), None))
    out = {"heldout_scatter": HeldoutScatter.fit(z[:, :n_sup], test_targets).to_dict(),
           "training_range": ranges}
    if head:
        out["variance_calibration"] = _fit_calibration(model, test_images, test_targets, z, log_var)
    return out


def calibrate_variance(model: TrainedModel, images: np.ndarray, targets: np.ndarray,
                       conditions: dict | None = None, per_bin: int = 300) -> dict:
    """The variance head's recalibration fitted on ``images`` (held-out, e.g. a larger set
    simulated for it) and their latent ``targets``: the ``variance_calibration`` meta."""
    z, log_var = model.encode(images, conditions, log_var=True)
    return _fit_calibration(model, images, targets, z, log_var, per_bin)


def _fit_calibration(model: TrainedModel, images, targets, z, log_var, per_bin: int = 300) -> dict:
    return VarianceCalibration.fit(targets, z[:, :len(model.supervised)], np.exp(0.5 * log_var),
                                   model.stamp_snr(images), per_bin=per_bin).to_dict()


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The rate for 0-based ``epoch``: a pure function of it, so a resumed run follows it too."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def residual_dropout(cfg: TrainConfig, epoch: int) -> float:
    """``res_dropout`` from the epoch ``res_dropout_from`` of the way through, 0 before it."""
    return cfg.res_dropout if epoch >= cfg.res_dropout_from * cfg.epochs else 0.0


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of a square image batch (k = 0 is the identity)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def dihedral_params(table: dict, k: int, size: int) -> dict:
    """The truth of the images :func:`dihedral` ``k`` makes: each quarter turn maps the centre
    ``(x, y) -> (y, size - x)`` and the shear ``g -> -g``; the flip ``x -> size - x``, ``g2 -> -g2``
    (flux, radius, n and |g| do not change)."""
    out = dict(table)
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    g1, g2 = np.asarray(table["g1"], float), np.asarray(table["g2"], float)
    for _ in range(k % 4):
        x, y, g1, g2 = y, size - x, -g1, -g2
    if k >= 4:
        x, g2 = size - x, -g2
    out.update(x=x, y=y, g1=g1, g2=g2)
    if "position_angle" in table:
        out["position_angle"] = ellipticity_from_shear(g1, g2)[1]
    return out


@torch.inference_mode()
def _evaluate_loss(network: CAE, x_all, y_all, c_all, ids, terms) -> dict[str, float]:
    network.eval()
    sums = {}
    for i in range(0, len(ids), 512):
        batch = torch.as_tensor(ids[i:i + 512]).to(x_all.device)
        _, parts = cae_loss(network, x_all[batch], y_all[batch], **terms,
                            c=None if c_all is None else c_all[batch])
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(batch)
    return {k: v / len(ids) for k, v in sums.items()}


def train_config_of(run_dir) -> TrainConfig:
    """The training config saved with a run."""
    meta = json.loads((Path(run_dir) / META).read_text())
    return from_dict(TrainConfig, meta["train_config"])
