"""A trained model in memory and on disk: the network, its preprocessing and its card.

On disk a model is ``model.safetensors`` (weights) + ``model.json`` (its
:class:`~galcae.card.ModelCard`: architecture, preprocessing, training set, error model,
refinement policy, provenance and the SHA-256 of the weights file), so a model is used
exactly as it was trained and a mismatched pair is refused. Training's optimizer state
(``--resume``) is safetensors too: nothing galcae reads is a pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .card import FORMAT, META, WEIGHTS, ModelCard, model_paths, read_card
from .conditions import condition_table, stamp_noise_sigma
from .errors import ModelError
from .model import CAE
from .outputs import atomic_file, write_text_atomic
from .physics import stamp_snr
from .scaling import ParameterScaling, PixelNormalization


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_device(choice: str = "auto") -> torch.device:
    """CUDA when asked or, for ``auto``, when present; CPU otherwise."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


@dataclass
class TrainedModel:
    """A CAE with the preprocessing it was trained with; encodes ADU images to parameters."""

    network: CAE
    normalization: PixelNormalization
    scaling: ParameterScaling
    meta: dict = field(default_factory=dict)
    conditioning: ParameterScaling | None = None  # standardisation of the observing conditions
    card: ModelCard | None = None  # as loaded (None while training: see ``meta``)

    def __post_init__(self):
        if self.network.arch.decoder == "sersic":  # the physical decoder draws through the scalings
            from .render import LatentRenderer, training_psf

            simulate = self.meta.get("dataset", {}).get("simulate", {})
            if simulate.get("pixel_scale") is None:
                raise ValueError("the sersic decoder needs the training set's pixel_scale "
                                 "(dataset.simulate.pixel_scale in model.json)")
            self.network.renderer = LatentRenderer(
                self.scaling, self.conditioning, self.normalization, self.network.arch.stamp_size,
                simulate["pixel_scale"], self.network.arch.decoder_grid,
                training_psf(simulate, self.conditions)).to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def epochs_trained(self) -> int:
        """Epochs behind the weights: this run's, plus its ``--init`` model's for a fine-tuned one."""
        return self.meta.get("epoch", 0) + (self.meta.get("init", {}).get("epoch") or 0)

    @property
    def supervised(self) -> tuple[str, ...]:
        return self.scaling.names

    @property
    def conditions(self) -> tuple[str, ...]:
        """Observing conditions the model takes besides the image (none for the paper's)."""
        return self.conditioning.names if self.conditioning is not None else ()

    def condition_input(self, images: np.ndarray, conditions: dict | None) -> np.ndarray | None:
        """``(N, n_conditions)`` standardised conditions of ``images`` (None for an
        unconditioned model): ``conditions`` maps names to scalars or per-image arrays;
        ``noise_sigma`` is measured on the stamps unless given."""
        if not self.conditions:
            return None
        # A constant stamp (blank, saturated) measures a noise of 0 (log10: -inf): out of range,
        # flagged by the caller.
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.conditioning.to_latent(condition_table(self.conditions, images, conditions or {}))

    def stamp_snr(self, images: np.ndarray, noise_sigma: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> np.ndarray:
        """:func:`galcae.physics.stamp_snr` of ``images`` under the training set's gain;
        ``noise_sigma`` per stamp is measured unless given; ``mask``: pixels left out."""
        gain = self.meta.get("dataset", {}).get("simulate", {}).get("noise", {}).get("gain", 1.0)
        return stamp_snr(images, stamp_noise_sigma(images) if noise_sigma is None else noise_sigma, gain, mask)

    def batches(self, images: np.ndarray, c: np.ndarray | None, step: int):
        """``(normalised images, conditions)`` tensors of ``step`` images at a time."""
        for i in range(0, len(images), step):
            cb = None if c is None else torch.as_tensor(c[i:i + step], device=self.device)
            yield self.to_input(images[i:i + step]), cb  # normalised per batch: memory stays small

    def to_input(self, images: np.ndarray) -> torch.Tensor:
        """ADU images ``(N, H, W)`` -> normalised network input ``(N, 1, H, W)`` on the device."""
        x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=self.device)
        return self.normalization.forward(x).unsqueeze(1).contiguous(
            memory_format=torch.channels_last)

    @property
    def batch_size(self) -> int:
        """Inference batch: small on CPU, where the activations of 32 stamps stay in cache
        (2-4x faster than 1,024), large on a GPU."""
        return 32 if self.device.type == "cpu" else 1024

    @torch.inference_mode()
    def encode(self, images: np.ndarray, conditions: dict | None = None,
               batch_size: int | None = None, log_var: bool = False):
        """Latent vectors ``(N, latent_dim)`` of ADU images, encoder only; with ``log_var``
        also the ``(N, n_supervised)`` predicted log-variances (variance-head models)."""
        self.network.eval()
        c = self.condition_input(images, conditions)
        z, v = [], []
        for x, cb in self.batches(images, c, batch_size or self.batch_size):
            zb, vb = self.network.heads(self.network.encoder(x), cb)
            z.append(zb.float().cpu().numpy())
            if log_var:
                if vb is None:
                    raise ValueError("this model has no variance head (train with predict_variance=true)")
                v.append(vb.float().cpu().numpy())
        arch = self.network.arch
        z = np.concatenate(z) if z else np.empty((0, arch.latent_dim), np.float32)
        if not log_var:
            return z
        return z, (np.concatenate(v) if v else np.empty((0, arch.n_supervised), np.float32))

    def predict(self, images: np.ndarray, conditions: dict | None = None,
                batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Physical parameters (one array per supervised name) and ``latents`` of ADU images."""
        z = self.encode(images, conditions, batch_size)
        return {**self.scaling.to_physical(z[:, :len(self.supervised)]), "latents": z}

    @torch.inference_mode()
    def decode(self, latents: np.ndarray, conditions: dict | None = None,
               batch_size: int | None = None) -> np.ndarray:
        """ADU images ``(N, H, W)`` decoded from latent vectors (and, for a conditioned
        model, the conditions to render them under; ``noise_sigma`` included)."""
        self.network.eval()
        latents = np.asarray(latents, np.float32)
        c = self.condition_input(np.empty((len(latents), 0, 0)), conditions)
        out, step = [], batch_size or self.batch_size
        for i in range(0, len(latents), step):
            z = torch.as_tensor(latents[i:i + step], device=self.device)
            cb = None if c is None else torch.as_tensor(c[i:i + step], device=self.device)
            out.append(self.normalization.inverse(self.network.decode(z, cb)[:, 0]).cpu().numpy())
        return np.concatenate(out)

    def reconstruct(self, images: np.ndarray, conditions: dict | None = None) -> np.ndarray:
        """Encode then decode: the model's reconstruction of each image, in ADU."""
        # Measured once (the noise, unless given), for the encoder and the decoder alike.
        conditions = condition_table(self.conditions, images, conditions or {})
        return self.decode(self.encode(images, conditions), conditions)


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_model(run_dir: Path, model: TrainedModel) -> None:
    """Write weights then ``model.json``, each through a temporary file and a rename.
    Non-finite weights are refused: a model that would answer NaN is never written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    bad = non_finite_tensors(state)
    if bad:
        raise ModelError(f"not saving {run_dir / WEIGHTS}: {len(bad)} weight tensors are not finite "
                         f"(first: {bad[0]})")
    with atomic_file(run_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp))
        sha = sha256_of(tmp)
    meta = {
        **model.meta,
        "format": FORMAT,
        "galcae_version": __version__,
        "architecture": model.network.arch.to_dict(),
        "normalization": model.normalization.to_dict(),
        "parameter_scaling": model.scaling.to_dict(),
        **({"condition_scaling": model.conditioning.to_dict()} if model.conditioning else {}),
        "weights_sha256": sha,
    }
    write_json_atomic(run_dir / META, meta)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(Path(path), json.dumps(data, indent=2))


# --- the optimizer's state, for --resume: tensors and plain values only, never a pickle -----------


def save_state(path: Path, state: dict) -> None:
    """Write nested ``state`` (dicts with str or int keys, lists, tensors, numbers, strings,
    None) as safetensors: the tensors as tensors, the rest as JSON in the file's metadata."""
    tensors = {}

    def encode(value, key: str):
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
            return {"tensor": key}
        if isinstance(value, dict):
            return {"dict": [[k, encode(v, f"{key}/{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"list": [encode(v, f"{key}/{i}") for i, v in enumerate(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        raise TypeError(f"cannot save a {type(value).__name__} at {key} in a training state")

    skeleton = json.dumps(encode(state, "state"))
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"galcae_state": skeleton})


def load_state(path: Path) -> dict:
    """What :func:`save_state` wrote; a damaged file is a :class:`ModelError` naming it."""
    from safetensors import safe_open

    def decode(node):
        if "tensor" in node:
            return f.get_tensor(node["tensor"])
        if "dict" in node:
            return {k: decode(v) for k, v in node["dict"]}
        if "list" in node:
            return [decode(v) for v in node["list"]]
        return node["value"]

    try:
        with safe_open(str(path), framework="pt") as f:
            return decode(json.loads((f.metadata() or {})["galcae_state"]))
    except (OSError, SafetensorError, KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{path} is not a galcae training state ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None


def load_model(path: str | Path, device: str = "auto") -> TrainedModel:
    """Load a model written by ``galcae train`` from its run directory or either file, or a
    model shipped with galcae by name (``"survey"``)."""
    weights, meta_path = model_paths(path)
    if not weights.is_file():
        raise ModelError(f"model file {weights} does not exist")
    card = read_card(meta_path)
    if sha256_of(weights) != card.weights_sha256:
        raise ModelError(f"{weights} does not match {meta_path} (SHA-256 differs): "
                         "corrupt, or from another run")
    try:
        network = CAE(card.architecture)
        state = load_file(str(weights))
        bad = non_finite_tensors(state)
        if bad:
            raise ValueError(f"{len(bad)} weight tensors are not finite (first: {bad[0]})")
        network.load_state_dict(state)
        model = TrainedModel(network, card.normalization, card.parameter_scaling, card.raw,
                             card.condition_scaling, card)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"{meta_path}: cannot rebuild the model ({first})") from None
    model.network.to(pick_device(device), memory_format=torch.channels_last).eval()
    return model
