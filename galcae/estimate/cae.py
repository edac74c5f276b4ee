"""The CAE as an estimator: finite ADU stamps and their conditions in; every supervised
parameter with its calibrated 1-sigma error and central 95% interval out (the variance head
recalibrated by the model card's error model, the held-out scatter, or MC dropout)."""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import TrainedModel
from ..errors import InputError
from ..params import ellipticity_errors, ellipticity_from_shear
from ..uncertainty import LEVELS, half_widths, physical_sigma


def uncertainty_method(model: TrainedModel, samples: int) -> str:
    head = model.network.arch.predict_variance
    if samples > 1:
        return "nll+mc_dropout" if head else "mc_dropout"
    return "nll" if head else "heldout"


def measure(model: TrainedModel, images: np.ndarray, conditions: dict | None = None, *,
            samples: int = 1, batch_size: int | None = None, generator: torch.Generator | None = None,
            latents: bool = False, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Predicted parameters, ``<name>_err`` and the central 95% interval ``<name>_lo95``,
    ``<name>_hi95`` of finite ADU stamps ``(N, H, W)``.

    ``conditions``: the observing conditions of a conditioned model (see
    :meth:`TrainedModel.condition_input`). Errors: the variance head (recalibrated) when the
    model has one, else the held-out scatter; ``samples > 1`` adds MC dropout, the spread of
    ``samples`` draws of the dropout mask on the encoder features (the convolutions run
    once). ``latents=True`` adds the full latent vectors (for reconstructions). ``mask``:
    ``(N, H, W)`` bool, pixels (neighbours, bad pixels) that the stamp's S/N, which the error
    model is binned in, leaves out.
    """
    check_samples(model, samples)
    z, z_var, z_all = _encode(model, images, conditions, samples, batch_size, generator, latents)
    sigma_z, tail = _latent_errors(model, images, conditions, z, z_var, samples, mask)
    values = model.scaling.to_physical(z)
    errors = physical_sigma(model.scaling, z, sigma_z)
    wide = half_widths(sigma_z, tail)[LEVELS[1]]  # latent: log10 axes give asymmetric ends
    lo, hi = model.scaling.to_physical(z - wide), model.scaling.to_physical(z + wide)
    out = {}
    for name in model.supervised:
        out[name], out[f"{name}_err"] = values[name], errors[name]
        out[f"{name}_lo95"], out[f"{name}_hi95"] = lo[name], hi[name]
    if "g1" in out and "g2" in out:
        out["ellipticity"], out["position_angle"] = ellipticity_from_shear(out["g1"], out["g2"])
        out["ellipticity_err"], out["position_angle_err"] = ellipticity_errors(
            out["g1"], out["g2"], out["g1_err"], out["g2_err"])
    if latents:
        out["latents"] = z_all
    return out


def _encode(model: TrainedModel, images, conditions, samples: int, batch_size, generator, latents: bool):
    """The supervised latents' means ``(N, n_supervised)``, their variances (the head's, plus
    the spread of MC-dropout draws; None without either) and, if asked, the full latents."""
    net = model.network.eval()
    n_sup, p = len(model.supervised), net.arch.dropout
    c = model.condition_input(images, conditions)
    z_mean, z_var, z_all = [], [], []
    with torch.inference_mode():
        for x, cb in model.batches(images, c, batch_size or model.batch_size):
            h = net.encoder(x)
            z, log_var = net.heads(h, cb)
            if latents:
                z_all.append(z.float().cpu().numpy())
            if samples == 1:
                z_mean.append(z[:, :n_sup].float().cpu().numpy())
                if log_var is not None:
                    z_var.append(log_var.exp().float().cpu().numpy())
                continue
            draws = [net.heads(h * (torch.rand(h.shape, generator=generator).to(h.device) >= p)
                               / (1 - p), cb) for _ in range(samples)]
            means = torch.stack([d[0][:, :n_sup] for d in draws])
            var = means.var(0)
            if log_var is not None:  # noise (the head, averaged) plus model (the spread of means)
                var = var + torch.stack([d[1].exp() for d in draws]).mean(0)
            z_mean.append(means.mean(0).float().cpu().numpy())
            z_var.append(var.float().cpu().numpy())
    z = np.concatenate(z_mean) if z_mean else np.empty((0, n_sup), np.float32)
    full = (np.concatenate(z_all) if z_all else np.empty((0, net.arch.latent_dim))) if latents else None
    return z, (np.concatenate(z_var) if z_var else None), full


def _latent_errors(model: TrainedModel, images, conditions, z: np.ndarray, z_var, samples: int, mask=None):
    """1-sigma in latent units and the factor on the Gaussian 95% half-width: the variance
    head's recalibrated by the model card's error model, or the held-out scatter."""
    errors = model.card.errors
    if z_var is None:
        if samples == 1 and errors.variance is None:
            return errors.heldout.latent_sigma(z), 1.0
        return np.empty((0, len(model.supervised)), np.float32), 1.0
    sigma_z = np.sqrt(z_var)
    if errors.variance is None:  # MC dropout alone: Gaussian intervals
        return sigma_z, 1.0
    calibration = errors.variance
    if calibration.needs_snr:  # the noise already measured for the conditions, if it was
        noise = (conditions or {}).get("noise_sigma")
        noise = None if noise is None else np.broadcast_to(np.asarray(noise, float), (len(images),))
        sigma_z = calibration.apply(sigma_z, model.stamp_snr(images, noise, mask))
    else:
        sigma_z = calibration.apply(sigma_z)
    return sigma_z, calibration.tail(sigma_z)


def check_samples(model: TrainedModel, samples: int, where="the model") -> None:
    """Refuse an uncertainty method the model cannot give."""
    if samples > 1 and model.network.arch.dropout <= 0:
        raise InputError(f"--samples {samples} needs a model trained with dropout > 0 "
                         f"(galcae train ... dropout=0.1); {where} has none")
    if samples == 1 and not model.network.arch.predict_variance and model.card.errors.heldout is None:
        raise InputError(f"{where} has no held-out error model (trained by an older galcae); "
                         "retrain it, or use --samples K with a dropout model")

