"""The differentiable Sérsic renderer against GalSim, and its derivatives."""

import math

import numpy as np
import pytest
import torch

from galcae.config import load_stage
from galcae.params import DRAWN, ellipticity_from_shear
from galcae.physics import render
from galcae.render import MAX_SHEAR, SersicRenderer

GALAXIES = [  # round and centred; sheared, off-centre, cuspy; large, faint wings; tiny in bad seeing
    {"flux": 1e4, "half_light_radius": 0.5, "sersic_n": 1.0, "g1": 0.0, "g2": 0.0, "x": 32.0, "y": 32.0,
     "psf_fwhm": 0.7, "psf_beta": 3.0},
    {"flux": 5e4, "half_light_radius": 0.3, "sersic_n": 4.0, "g1": 0.35, "g2": -0.2, "x": 30.6, "y": 33.3,
     "psf_fwhm": 0.5, "psf_beta": 2.5},
    {"flux": 2e5, "half_light_radius": 2.5, "sersic_n": 4.5, "g1": -0.1, "g2": 0.3, "x": 32.4, "y": 31.2,
     "psf_fwhm": 0.9, "psf_beta": 4.0},
    {"flux": 800.0, "half_light_radius": 0.15, "sersic_n": 0.6, "g1": 0.5, "g2": 0.1, "x": 33.9, "y": 30.1,
     "psf_fwhm": 1.2, "psf_beta": 5.0},
]


def batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in DRAWN}


def test_renderer_draws_what_galsim_draws():
    """Under Moffat seeing the torch image is GalSim's drawImage, well within a bright galaxy's noise."""
    # Round and centred, sheared, off-centre, cuspy, large and tiny galaxies.
    images = SersicRenderer(64, 0.2)(batch(GALAXIES)).double().numpy()
    for image, g in zip(images, GALAXIES):
        cfg = load_stage("simulate", "survey", [f"psf.fwhm={g['psf_fwhm']}", f"psf.beta={g['psf_beta']}"])
        expected = render(cfg, g)
        assert np.abs(image - expected).max() < 3e-3 * expected.max(), g
        assert image.sum() == pytest.approx(expected.sum(), rel=3e-3)  # wrapped wings: 2e-3 at 2.5"


def test_renderer_draws_galsim_gaussian_psf_without_beta():
    """Without a Moffat beta the renderer draws GalSim's galaxy under a Gaussian PSF."""
    g = {**GALAXIES[1], "psf_beta": None}
    p = {k: torch.tensor([v], dtype=torch.float64) for k, v in g.items() if v is not None}
    image = SersicRenderer(64, 0.2)(p)[0].double().numpy()
    expected = render(load_stage("simulate", "paper", ["psf.fwhm=0.5"]), g)
    assert np.abs(image - expected).max() < 3e-3 * expected.max()


def test_renderer_is_differentiable_in_every_parameter():
    """Autograd gives a finite, non-zero gradient of the image in every parameter."""
    p = {k: v.clone().requires_grad_() for k, v in batch(GALAXIES[:2]).items()}
    weights = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))  # breaks symmetries
    (SersicRenderer(64, 0.2)(p) * weights).sum().backward()
    for name in DRAWN:
        assert torch.isfinite(p[name].grad).all() and (p[name].grad != 0).all(), name


def test_a_shear_beyond_one_is_drawn_at_the_largest_and_a_nan_stays_a_nan():
    """An unconstrained latent may ask for |g| >= 1 (no ellipse) or, diverged, for NaN: the
    first is drawn at MAX_SHEAR along its direction, in float32 as a network draws it; the
    second gives a NaN image for the loss to catch, not an indexing error."""
    renderer = SersicRenderer(64, 0.2)
    largest = MAX_SHEAR / math.hypot(0.17, 0.985)
    rows = [{**GALAXIES[0], "g1": 0.17 * s, "g2": -0.985 * s} for s in (1.0, 1.4, largest)]
    images = renderer({k: v.float() for k, v in batch(rows).items()})
    assert torch.isfinite(images).all()
    for image in images[:2]:
        assert (image - images[2]).abs().max() < 1e-5 * images[2].max()
    nan = renderer(batch([{**GALAXIES[0], "half_light_radius": math.nan}]))
    assert torch.isnan(nan).all()


def test_closed_form_derivatives_match_finite_differences():
    """``with_derivatives`` matches central finite differences (in the log of flux, r½ and n)."""
    renderer = SersicRenderer(64, 0.2).double()
    p = batch(GALAXIES[:2])
    _, derivatives = renderer.with_derivatives(p)
    for i, name in enumerate(("flux", "half_light_radius", "sersic_n", "g1", "g2", "x", "y")):
        h = 1e-5
        up, down = dict(p), dict(p)
        if name in ("flux", "half_light_radius", "sersic_n"):  # derivatives in the log
            up[name], down[name] = p[name] * np.exp(h), p[name] * np.exp(-h)
        else:
            up[name], down[name] = p[name] + h, p[name] - h
        numeric = (renderer(up) - renderer(down)) / (2 * h)
        assert torch.allclose(derivatives[:, i], numeric, atol=1e-5 * numeric.abs().max()), name


def test_renderer_draws_through_a_psf_image_as_galsim_interpolated_image_does(aberrated_psf):
    """Through a PSF image the torch galaxy is GalSim's, drawn through the image's
    InterpolatedImage without a second pixel."""
    from galcae.physics import psf_from_image, render_noiseless

    psf = aberrated_psf
    renderer = SersicRenderer(64, 0.2)
    p = {k: v.float() for k, v in batch(GALAXIES).items()}
    p["psf_k"] = renderer.psf_transform(psf)[None].expand(len(GALAXIES), -1, -1)
    images = renderer(p).double().numpy()
    cfg = load_stage("simulate", "survey")
    for image, g in zip(images, GALAXIES):
        ellipticity, position_angle = ellipticity_from_shear(g["g1"], g["g2"])
        row = {**g, "ellipticity": float(ellipticity), "position_angle": float(position_angle)}
        expected = render_noiseless(cfg, row, psf_from_image(psf, 0.2)).array
        assert np.abs(image - expected).max() < 3e-4 * expected.max(), g
    # The derivatives are drawn through the same PSF.
    image, derivatives = renderer.with_derivatives(p)
    assert torch.allclose(derivatives[:, 0], image) and torch.allclose(image, renderer(p), rtol=1e-5, atol=1e-6)


def test_transform_tables_are_cached_on_disk(tmp_path, monkeypatch):
    """The tables are computed once, written to the cache, and read back equal; a damaged
    cache file is computed again; GALCAE_CACHE='' turns the cache off."""
    from galcae import render

    monkeypatch.setenv("GALCAE_CACHE", str(tmp_path))
    render.transform_tables.cache_clear()
    first = render.transform_tables(8, 16)
    (cached,) = tmp_path.glob("transform-tables-*-8x16.npz")
    render.transform_tables.cache_clear()
    again = render.transform_tables(8, 16)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    cached.write_bytes(b"not an npz")
    render.transform_tables.cache_clear()
    assert all(np.array_equal(a, b) for a, b in zip(first, render.transform_tables(8, 16)))
    monkeypatch.setenv("GALCAE_CACHE", "")
    assert render.tables_cache("x") is None
    render.transform_tables.cache_clear()
