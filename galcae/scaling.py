"""Fixed transforms between physical units and what the network sees.

Both are fitted once on the training split, saved in ``model.json`` and applied
unchanged at inference, so a user never re-passes training-time choices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PixelNormalization:
    """Global asinh stretch of ADU pixels into ``[0, 1]`` for the sigmoid/BCE decoder.

    ``u = (asinh(pixel / softening) - low) / (high - low)``, clipped to ``[0, 1]``. One
    set of constants for every image: absolute flux survives (no per-image scaling),
    noise-level pixels stay nearly linear and bright cores are compressed.
    """

    softening: float  # ADU; the sky noise sigma, where the stretch turns logarithmic
    low: float  # asinh value mapped to 0
    high: float  # asinh value mapped to 1

    @classmethod
    def fit(cls, images: np.ndarray, noise_sigma: float, stretch: str = "asinh") -> "PixelNormalization":
        """Map ``-5 sigma`` to 0 and 1.2 x the brightest training pixel's stretch to 1.

        ``stretch="linear"``: the same map with the softening far above every pixel, where
        asinh is a straight line (one scale for all pixels: the sky noise and faint wings
        then sit within a few thousandths of 0)."""
        peak = max(float(np.nanmax(images)), 5.0 * noise_sigma)
        softening = float(noise_sigma) if stretch == "asinh" else 1e3 * peak
        return cls(softening=softening, low=float(np.arcsinh(-5.0 * noise_sigma / softening)),
                   high=float(1.2 * np.arcsinh(peak / softening)))

    def forward(self, pixels):
        """ADU -> ``[0, 1]`` (numpy or torch)."""
        lib = _lib(pixels)
        u = (_arcsinh(pixels / self.softening) - self.low) / (self.high - self.low)
        return lib.clip(u, 0.0, 1.0)

    def inverse(self, u):
        """``[0, 1]`` -> ADU (numpy or torch)."""
        lib = _lib(u)
        return lib.sinh(u * (self.high - self.low) + self.low) * self.softening

    @property
    def noise_sigma(self) -> float:
        """The training set's sky noise (ADU), which ``-5 sigma -> 0`` fixed: the scale of figures."""
        return float(-np.sinh(self.low) * self.softening / 5.0)

    @property
    def ceiling(self) -> float:
        """The ADU value mapped to 1: brighter pixels lie beyond what the network was trained on."""
        return float(np.sinh(self.high) * self.softening)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParameterScaling:
    """Standardisation of the supervised parameters onto unit-variance latent axes.

    ``z = (t(v) - mean) / std`` with ``t = log10`` for log-scaled parameters (a log axis
    weighs relative errors evenly) and identity otherwise (absolute errors evenly).
    """

    names: tuple[str, ...]
    log: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, table: dict[str, np.ndarray], names, log_scaled) -> "ParameterScaling":
        log = tuple(name in log_scaled for name in names)
        t = [np.log10(table[n]) if lg else np.asarray(table[n], float) for n, lg in zip(names, log)]
        return cls(tuple(names), log, tuple(float(np.mean(v)) for v in t),
                   tuple(float(np.std(v)) or 1.0 for v in t))

    @classmethod
    def from_dict(cls, data: dict) -> "ParameterScaling":
        return cls(**{k: tuple(v) for k, v in data.items()})

    def to_latent(self, table: dict[str, np.ndarray]) -> np.ndarray:
        """``(N, len(names))`` standardised targets from physical columns."""
        cols = [(np.log10(table[n]) if lg else np.asarray(table[n], float))
                for n, lg in zip(self.names, self.log)]
        return ((np.stack(cols, axis=1) - np.array(self.mean)) / np.array(self.std)).astype(np.float32)

    def to_physical(self, z) -> dict:
        """Physical columns from ``(N, len(names))`` supervised latents (numpy, or torch and
        differentiable, as the sersic decoder needs)."""
        if _lib(z) is np:
            t = np.asarray(z, float) * np.array(self.std) + np.array(self.mean)
        else:
            t = z * z.new_tensor(self.std) + z.new_tensor(self.mean)
        return {n: (10.0 ** t[:, i] if lg else t[:, i])
                for i, (n, lg) in enumerate(zip(self.names, self.log))}

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


def _lib(x):
    """numpy or torch, whichever ``x`` belongs to."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def _arcsinh(x):
    """asinh of a numpy array or a tensor; for tensors through log1p, which PyTorch
    vectorises (2.5x faster than ``torch.arcsinh`` on a CPU, the same to float32 rounding):
    every stamp a model measures goes through it."""
    lib = _lib(x)
    if lib is np:
        return np.arcsinh(x)
    a = x.abs()
    return lib.copysign(lib.log1p(a + a * a / (1 + lib.sqrt(1 + a * a))), x)
