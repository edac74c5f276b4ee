"""Fresh training galaxies: each epoch a new draw from the dataset's own priors, drawn by the
PyTorch twin of GalSim (:mod:`galcae.render`) with the simulation's CCD noise.

A fixed training set is seen again every epoch, and a long training learns its noise; the
renderer draws a galaxy in about a millisecond where GalSim takes tens, so every epoch can
be new galaxies instead. The dataset still gives everything else: the priors and the
observing conditions (its :class:`~galcae.config.SimConfig`), the preprocessing fitted on
its train split, and the held-out split for the test loss and the error model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .conditions import condition_table
from .config import SimConfig
from .physics import ccd_noise, psf_beta_or_none
from .render import SersicRenderer
from .simulate import NEIGHBOUR_PREFIX, draw_parameters

#: FFT grid, in stamps per side, on which fresh galaxies are drawn. Against a grid of eight,
#: the light wrapped onto a pixel of 2,000 `survey` galaxies is at most 0.08 sky sigma on
#: three stamps (0.007 for 99 %; 0.38 on two, 0.03 on the renderer's default four), for
#: 56 % of four's arithmetic (docs/choices.md#training-throughput).
GRID = 3
#: Galaxies rendered at once: large enough to amortise Python, small enough for the cache.
CHUNK = 256


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's galaxies: a pure function of the run's seed and the (0-based)
    epoch, so that a resumed run draws the galaxies an uninterrupted one would."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class FreshGalaxies:
    """Draws a simulation's galaxies with noise in PyTorch: parameters from
    :func:`galcae.simulate.draw_parameters` (the same priors), images from
    :class:`~galcae.render.SersicRenderer`, noise from :func:`galcae.physics.ccd_noise`."""

    def __init__(self, sim: SimConfig, device: torch.device | str = "cpu", grid: int = GRID,
                 mask_neighbours: bool = False, bad_pixels: float = 0.0):
        self.sim = sim
        self.mask_neighbours = mask_neighbours  # as TrainConfig.mask_neighbours
        self.bad_pixels = bad_pixels  # as TrainConfig.bad_pixels
        self.renderer = SersicRenderer(sim.stamp_size, sim.pixel_scale, pad=grid).to(device)

    def draw(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """The truth table of ``n`` new galaxies (the columns of a dataset's)."""
        return draw_parameters(dataclasses.replace(self.sim, n_galaxies=n, seed=seed))

    @torch.no_grad()
    def noiseless(self, rows: dict[str, np.ndarray]) -> torch.Tensor:
        """``(N, H, W)`` noiseless float32 images in ADU of a truth table's rows (with their
        neighbours, where the table has them)."""
        image = self._draw(rows, "")
        if NEIGHBOUR_PREFIX + "flux" in rows:
            image = image + self._draw(rows, NEIGHBOUR_PREFIX)
        return image

    def _draw(self, rows: dict[str, np.ndarray], prefix: str) -> torch.Tensor:
        """The galaxies (``prefix`` "") or their neighbours (:data:`NEIGHBOUR_PREFIX`) of ``rows``."""
        device = self.renderer.kx.device
        p = {k: torch.as_tensor(np.asarray(rows[prefix + k], np.float32), device=device)
             for k in ("flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y")}
        p["psf_fwhm"] = torch.as_tensor(np.asarray(rows["psf_fwhm"], np.float32), device=device)
        beta = psf_beta_or_none(self.sim.psf.profile, rows["psf_beta"])
        p["psf_beta"] = None if beta is None else torch.as_tensor(np.asarray(beta, np.float32), device=device)
        return self.renderer(p)

    def images(self, rows: dict[str, np.ndarray], generator: torch.Generator) -> np.ndarray:
        """``(N, H, W)`` float32 images in ADU with noise, as ``galcae simulate`` writes them."""
        mean = self.noiseless(rows)
        sky = torch.as_tensor(np.asarray(rows["sky_level"], np.float32), device=mean.device)[:, None, None]
        noise = self.sim.noise
        return ccd_noise(mean, sky, noise.gain, noise.read_noise, generator).cpu().numpy()

    def epoch(self, n: int, seed: int, conditions: tuple[str, ...], chunk: int = CHUNK):
        """An epoch's ``n`` galaxies, ``chunk`` at a time: ``(rows, images, conditions)``, the
        conditions measured on the stamps as for a dataset's."""
        rows = self.draw(n, seed)
        generator = torch.Generator(device=self.renderer.kx.device).manual_seed(seed)
        for start in range(0, n, chunk):
            part = {k: v[start:start + chunk] for k, v in rows.items()}
            images = self.images(part, generator)
            measured = condition_table(conditions, images, part)  # as read, as galcae infer measures them
            if self.mask_neighbours:
                from .catalog.segment import neighbours_as_sky

                neighbours_as_sky(images, np.random.default_rng([seed, start]), self.bad_pixels)
            yield part, images, measured
