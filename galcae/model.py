"""The conditional autoencoder of the paper's appendix, layer by layer.

Encoder: Conv(32, 3x3, ReLU) -> MaxPool(2) -> Conv(64, 3x3, ReLU) -> MaxPool(2) -> Flatten
(optionally followed by dropout, which the paper does not have).
Latent: ``z_phys`` = Dense(n_supervised, linear), one axis per supervised parameter;
``z_res`` = Dense(latent_dim - n_supervised, ReLU), pushed towards zero by an L1 penalty.
Decoder: Dense(16x16x64, ReLU) -> UpSample(2) -> Conv(64, 3x3, ReLU) -> UpSample(2)
-> Conv(32, 3x3, ReLU) -> Conv(1, 3x3, sigmoid).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Architecture:
    """Shape of the CAE; saved in ``model.json`` so a model rebuilds without guessing."""

    stamp_size: int = 64  # input side in pixels; must be divisible by 4
    latent_dim: int = 64  # total latents (paper: 64)
    n_supervised: int = 2  # leading latents tied to physical parameters (paper: 2)
    channels: tuple[int, int] = (32, 64)  # encoder conv widths; the decoder mirrors them
    # Dropout on the encoder's flattened features (not in the paper, 0 there): a model
    # trained with it can give Monte-Carlo-dropout uncertainties at inference.
    dropout: float = 0.0

    def __post_init__(self):
        if self.stamp_size % 4:
            raise ValueError(f"stamp_size {self.stamp_size} is not divisible by 4")

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        return cls(**{**data, "channels": tuple(data["channels"])})


class CAE(nn.Module):
    """The paper's CAE; ``encode`` gives ``[z_phys, z_res]``, ``decode`` the image in [0, 1]."""

    def __init__(self, arch: Architecture = Architecture()):
        super().__init__()
        self.arch = arch
        c1, c2 = arch.channels
        side = arch.stamp_size // 4
        flat = c2 * side * side
        # Pooling before the ReLU is the same function (max and ReLU commute) and runs the
        # ReLU on a quarter of the pixels: 2-4x faster encoding on CPU.
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten())
        self.dropout = nn.Dropout(arch.dropout)
        self.to_phys = nn.Linear(flat, arch.n_supervised)
        self.to_res = nn.Linear(flat, arch.latent_dim - arch.n_supervised)
        self.decoder = nn.Sequential(
            nn.Linear(arch.latent_dim, flat), nn.ReLU(), nn.Unflatten(1, (c2, side, side)),
            nn.Upsample(scale_factor=2), nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(c2, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, 1, 3, padding=1))  # logits; the sigmoid is applied in decode / the loss

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` normalised images -> ``(B, latent_dim)`` latents ``[z_phys, z_res]``."""
        return self.heads(self.encoder(x))

    def heads(self, features: torch.Tensor) -> torch.Tensor:
        """Flattened encoder features -> latents (dropout applies here, in training mode)."""
        h = self.dropout(features)
        return torch.cat([self.to_phys(h), F.relu(self.to_res(h))], dim=1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> ``(B, 1, H, W)`` reconstructions in ``[0, 1]``."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction logits and latents."""
        z = self.encode(x)
        return self.decode_logits(z), z


def cae_loss(model: CAE, x: torch.Tensor, y_phys: torch.Tensor, lambda_phys: float,
             lambda_l1: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 2-5: BCE(x, x_hat) + lambda_phys * MSE(z_phys, y) + lambda_l1 * mean|z_res|.

    Returns the total (for backward) and its three terms as floats.
    """
    logits, z = model(x)
    n_sup = model.arch.n_supervised
    bce = F.binary_cross_entropy_with_logits(logits, x)  # == BCE(sigmoid(logits), x), stabler
    mse = F.mse_loss(z[:, :n_sup], y_phys)
    l1 = z[:, n_sup:].abs().mean()
    total = bce + lambda_phys * mse + lambda_l1 * l1
    return total, {"loss": total.item(), "bce": bce.item(), "mse": mse.item(), "l1": l1.item()}
