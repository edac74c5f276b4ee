"""The conditional autoencoder of the paper's appendix, layer by layer.

Encoder: Conv(32, 3x3, ReLU) -> MaxPool(2) -> Conv(64, 3x3, ReLU) -> MaxPool(2) -> Flatten
(optionally followed by dropout, which the paper does not have).
Latent: ``z_phys`` = Dense(n_supervised, linear), one axis per supervised parameter;
``z_res`` = Dense(latent_dim - n_supervised, ReLU), pushed towards zero by an L1 penalty.
Decoder: Dense(16x16x64, ReLU) -> UpSample(2) -> Conv(64, 3x3, ReLU) -> UpSample(2)
-> Conv(32, 3x3, ReLU) -> Conv(1, 3x3, sigmoid).

Beyond the paper (all off in its preset, so the paper's network is unchanged):

- conditioning: ``n_conditions`` standardised observing conditions (PSF FWHM and Moffat
  beta, sky noise) are appended to the encoder's features before the latent heads and to
  the latents at the decoder's input, so one network serves a range of seeing and sky;
- ``channels`` of any length: one Conv -> MaxPool -> ReLU block per entry, mirrored by the
  decoder (the paper has two);
- ``head_hidden``: a Dense(head_hidden, ReLU) layer between the features (and conditions)
  and the latent heads. The paper's heads are linear in the features, which cannot
  express, e.g., the deconvolution of a size by a PSF that is an input;
- ``predict_variance``: a third head, Dense(n_supervised, linear), gives the log-variance
  of each supervised latent, trained with a Gaussian negative log-likelihood;
- ``decoder: sersic``: the supervised latents are drawn as the galaxy they describe (a
  differentiable GalSim-matched Sérsic seen through the PSF of the conditions,
  :mod:`galcae.render`), and the mirrored convolutional decoder, fed the free latents and
  the conditions only, adds residual light (in units of the sky noise, zero when the free
  latents are) before the pixel stretch. Moving a supervised latent then changes its
  parameter alone, by construction; the free latents hold what a Sérsic profile does not.
  ``residual_channels`` (narrower than the encoder's) and ``residual_conditions: false``
  (free latents only, so the zero point is one image per batch, not a second pass) make
  that branch, most of a training step, cheaper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .config import DECODERS


@dataclass(frozen=True)
class Architecture:
    """Shape of the CAE; saved in ``model.json`` so a model rebuilds without guessing."""

    stamp_size: int = 64  # input side in pixels; must be divisible by 2 ** len(channels)
    latent_dim: int = 64  # total latents (paper: 64)
    n_supervised: int = 2  # leading latents tied to physical parameters (paper: 2)
    channels: tuple[int, ...] = (32, 64)  # encoder conv widths; the decoder mirrors them
    # Dropout on the encoder's flattened features (not in the paper, 0 there): a model
    # trained with it can give Monte-Carlo-dropout uncertainties at inference.
    dropout: float = 0.0
    n_conditions: int = 0  # observing conditions fed to encoder heads and decoder
    predict_variance: bool = False  # a log-variance head for the supervised latents
    head_hidden: int = 0  # width of a hidden layer before the latent heads; 0 = linear heads
    decoder: str = "conv"  # "conv" (the paper's) or "sersic" (physical, plus a residual)
    # The sersic decoder's residual branch and drawing (the conv decoder has neither). The
    # defaults are the models' up to survey-v2: the branch mirrors the encoder, sees the
    # conditions, and the galaxy is drawn on a 4-stamp FFT grid.
    residual_channels: tuple[int, ...] = ()  # its widths, mirrored as `channels` are; () = `channels`
    # With the conditions as inputs, the branch's zero point (its output for zero free
    # latents) differs per galaxy and takes a second pass; without, it is one image per batch.
    residual_conditions: bool = True
    decoder_grid: int = 4  # the drawn galaxy's FFT grid, in stamps per side

    def __post_init__(self):
        if not self.channels:
            raise ValueError("channels is empty: the encoder needs at least one convolution")
        for widths, what in ((self.channels, "poolings"), (self.residual_widths, "residual_channels")):
            if self.stamp_size % 2 ** len(widths):
                raise ValueError(f"stamp_size {self.stamp_size} is not divisible by {2 ** len(widths)}, "
                                 f"as {len(widths)} {what} need")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder '{self.decoder}' is not one of {', '.join(DECODERS)}")

    @property
    def reduction(self) -> int:
        """How much the encoder's poolings shrink each side of the image."""
        return 2 ** len(self.channels)

    @property
    def residual_widths(self) -> tuple[int, ...]:
        """The sersic decoder's residual branch's widths (mirrored)."""
        return self.residual_channels or self.channels

    def decoder_differences(self, other: "Architecture") -> list[str]:
        """What keeps ``other``'s decoder weights from fitting this decoder: its kind or, for
        the sersic decoder, its residual branch (the drawing grid has no weights)."""
        shaping = ("decoder",) + (("residual_widths", "residual_conditions") if self.decoder == "sersic" else ())
        return [k for k in shaping if getattr(self, k) != getattr(other, k)]

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels), "residual_channels": list(self.residual_channels)}

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        return cls(**{**data, "channels": tuple(data["channels"]),
                      "residual_channels": tuple(data.get("residual_channels", ()))})


#: The fields of :class:`Architecture` that shape the decoder only: a model may start
#: (``galcae train --init``) from one whose decoder differs in them, with its encoder's weights.
DECODER_FIELDS = ("decoder", "residual_channels", "residual_conditions", "decoder_grid")


def mirrored_decoder(channels: tuple[int, ...], side: int, n_inputs: int) -> nn.Sequential:
    """Dense -> (channels[-1], side, side), then per block UpSample(2) -> Conv -> ReLU down to
    channels[0], and a last Conv to one channel of logits. For the paper's (32, 64):
    Dense(16x16x64) -> Up -> Conv(64) -> Up -> Conv(32) -> Conv(1)."""
    top = channels[-1]
    layers = [nn.Linear(n_inputs, top * side * side), nn.ReLU(), nn.Unflatten(1, (top, side, side))]
    widths = (top,) + tuple(reversed(channels))  # e.g. (64, 64, 32)
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
    # logits; the sigmoid is applied in decode / the loss
    return nn.Sequential(*layers, nn.Conv2d(channels[0], 1, 3, padding=1))


class CAE(nn.Module):
    """The paper's CAE; ``encode`` gives ``[z_phys, z_res]``, ``decode`` the image in [0, 1].

    ``c`` is the ``(B, n_conditions)`` standardised conditions; ``None`` when there are none.
    """

    def __init__(self, arch: Architecture = Architecture()):
        super().__init__()
        self.arch = arch
        side = arch.stamp_size // arch.reduction
        # Pooling before the ReLU is the same function (max and ReLU commute) and runs the
        # ReLU on a quarter of the pixels: 2-4x faster encoding on CPU.
        blocks = []
        for c_in, c_out in zip((1,) + arch.channels[:-1], arch.channels):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()]
        self.encoder = nn.Sequential(*blocks, nn.Flatten())
        self.dropout = nn.Dropout(arch.dropout)
        seen = arch.channels[-1] * side * side + arch.n_conditions
        self.hidden = None
        if arch.head_hidden:
            self.hidden = nn.Sequential(nn.Linear(seen, arch.head_hidden), nn.ReLU())
            seen = arch.head_hidden
        self.to_phys = nn.Linear(seen, arch.n_supervised)
        self.to_res = nn.Linear(seen, arch.latent_dim - arch.n_supervised)
        self.to_log_var = nn.Linear(seen, arch.n_supervised) if arch.predict_variance else None
        self.renderer = None  # the sersic decoder's LatentRenderer, attached by TrainedModel
        if arch.decoder == "sersic":
            widths = arch.residual_widths
            self.decoder = mirrored_decoder(widths, arch.stamp_size // 2 ** len(widths),
                                            arch.latent_dim - arch.n_supervised
                                            + (arch.n_conditions if arch.residual_conditions else 0))
            # The residual starts at zero: the image is the physical one until training says otherwise.
            nn.init.zeros_(self.decoder[-1].weight)
            nn.init.zeros_(self.decoder[-1].bias)
        else:
            self.decoder = mirrored_decoder(arch.channels, side, arch.latent_dim + arch.n_conditions)

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` normalised images -> ``(B, latent_dim)`` latents ``[z_phys, z_res]``."""
        return self.heads(self.encoder(x), c)[0]

    def heads(self, features: torch.Tensor, c: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flattened encoder features -> latents and the supervised log-variances (or None).
        Dropout applies here, in training mode."""
        h = self.dropout(features)
        h = self.with_conditions(h, c)
        if self.hidden is not None:
            h = self.hidden(h)
        z = torch.cat([self.to_phys(h), F.relu(self.to_res(h))], dim=1)
        # Clamped: a variance e^±12 is already far beyond any physical error.
        log_var = self.to_log_var(h).clamp(-12.0, 12.0) if self.to_log_var is not None else None
        return z, log_var

    def with_conditions(self, h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if not self.arch.n_conditions:
            return h
        if c is None or c.shape != (h.shape[0], self.arch.n_conditions):
            raise ValueError(f"this network is conditioned on {self.arch.n_conditions} observing "
                             f"conditions per image; got {None if c is None else tuple(c.shape)}")
        return torch.cat([h, c.to(h.dtype)], dim=1)

    def decode_logits(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.arch.decoder == "conv":
            return self.decoder(self.with_conditions(z, c))
        if self.renderer is None:
            raise RuntimeError("a sersic-decoder CAE draws through its model's scalings: "
                               "use it through TrainedModel (galcae.checkpoint)")
        n_sup = self.arch.n_supervised
        # What the free latents add: nothing when they are zero, so that the conditions alone
        # cannot paint a fixed correction (e.g. for the encoder's flux bias) that a traversal
        # of the galaxy would then leave behind.
        free = z[:, n_sup:]
        if self.arch.residual_conditions and c is not None:
            both = self.decoder(self.with_conditions(torch.cat([free, torch.zeros_like(free)]), torch.cat([c, c])))
            residual = both[:len(z)] - both[len(z):]
        else:  # one zero point for all: the branch does not see the conditions (or has none)
            residual = self.decoder(free) - self.decoder(free.new_zeros(1, free.shape[1]))
        return self.renderer(z[:, :n_sup], c, residual)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (and conditions) -> ``(B, 1, H, W)`` reconstructions in ``[0, 1]``."""
        return torch.sigmoid(self.decode_logits(z, c))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None):
        """Reconstruction logits, latents and supervised log-variances (or None)."""
        z, log_var = self.heads(self.encoder(x), c)
        return self.decode_logits(z, c), z, log_var


def cae_loss(model: CAE, x: torch.Tensor, y_phys: torch.Tensor, lambda_phys: float,
             lambda_l1: float, c: torch.Tensor | None = None, nll_beta: float | None = None,
             res_dropout: float = 0.0, res_dropout_each: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 2-5: BCE(x, x_hat) + lambda_phys * MSE(z_phys, y) + lambda_l1 * mean|z_res|,
    plus, with a variance head, lambda_phys * the Gaussian NLL of the residuals.

    By default the NLL sees the mean detached (Stirn et al. 2023, "faithful" heteroscedastic
    regression): the variance is fitted to the residuals the MSE leaves, and cannot buy a
    lower loss by blurring the mean. The MSE then weighs every galaxy alike, so galaxies
    too faint to measure dominate it. ``nll_beta`` in [0, 1] replaces both terms with the
    beta-NLL of Seitzer et al. (2022), ``stopgrad(sigma^(2 beta)) * NLL``: each residual is
    weighed by ``1 / sigma^(2 (1 - beta))``, so well-measured galaxies count more (beta = 0
    is the plain NLL, the maximum-likelihood weighting; beta = 1 weighs like the MSE).
    ``res_dropout``: in training mode, the probability that a galaxy's residual latents are
    zeroed at the decoder's input, so the decoder must render it from the supervised latents
    alone and cannot rely on the free ones for what the supervised ones hold.
    ``res_dropout_each``: drop each residual latent on its own with that probability (the
    others scaled up, as :class:`torch.nn.Dropout` does) instead of all of a galaxy's at once.
    Returns the total (for backward) and its terms as floats.
    """
    n_sup = model.arch.n_supervised
    if res_dropout and model.training:
        z, log_var = model.heads(model.encoder(x), c)
        free = z[:, n_sup:]
        if res_dropout_each:
            free = F.dropout(free, res_dropout)
        else:
            free = free * (torch.rand(len(z), 1, device=z.device) >= res_dropout).to(z.dtype)
        logits = model.decode_logits(torch.cat([z[:, :n_sup], free], dim=1), c)
    else:
        logits, z, log_var = model(x, c)
    bce = F.binary_cross_entropy_with_logits(logits, x)  # == BCE(sigmoid(logits), x), stabler
    residual2 = (z[:, :n_sup] - y_phys) ** 2
    mse = residual2.mean()
    l1 = z[:, n_sup:].abs().mean()
    parts = {"bce": bce.item(), "mse": mse.item(), "l1": l1.item()}
    if nll_beta is not None:
        if log_var is None:
            raise ValueError("nll_beta needs a network with a variance head (predict_variance)")
        nll = 0.5 * (log_var + residual2 * torch.exp(-log_var))
        phys = (torch.exp(nll_beta * log_var.detach()) * nll).mean()
        parts["nll"] = nll.mean().item()
    else:
        phys = mse
        if log_var is not None:
            nll = 0.5 * (log_var + residual2.detach() * torch.exp(-log_var)).mean()
            phys = phys + nll
            parts["nll"] = nll.item()
    total = bce + lambda_phys * phys + lambda_l1 * l1
    return total, {"loss": total.item(), **parts}
