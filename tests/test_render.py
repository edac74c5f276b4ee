"""The differentiable Sérsic renderer and the CAE's physical (``sersic``) decoder."""

import dataclasses

import numpy as np
import pytest
import torch

from galcae.checkpoint import load_model
from galcae.conditions import stamp_noise_sigma
from galcae.config import ConfigError, TrainConfig, load_stage
from galcae.estimate.batchfit import fit_batch
from galcae.params import FIT_PARAMETERS
from galcae.physics import render
from galcae.estimate.fit import fit_stamp
from galcae.render import PARAMETERS, SersicRenderer
from galcae.physics import make_psf
from galcae.simulate import draw_parameters, render_chunk
from galcae.train import train_config_of, train_model


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


def galaxy(net, z: torch.Tensor, c: torch.Tensor) -> np.ndarray:
    """The decoder's Sérsic galaxy in ADU, without the residual."""
    return net.renderer.galaxy(z[:, :7], c).numpy()


def batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in PARAMETERS}


def test_renderer_draws_what_galsim_draws():
    """Sheared, off-centre, cuspy and large galaxies under Moffat seeing: the torch image is
    GalSim's drawImage to well within the noise of a bright galaxy."""
    images = SersicRenderer(64, 0.2)(batch(GALAXIES)).double().numpy()
    for image, g in zip(images, GALAXIES):
        cfg = load_stage("simulate", "survey", [f"psf.fwhm={g['psf_fwhm']}", f"psf.beta={g['psf_beta']}"])
        expected = render(cfg, g)
        assert np.abs(image - expected).max() < 3e-3 * expected.max(), g
        assert image.sum() == pytest.approx(expected.sum(), rel=3e-3)  # wrapped wings: 2e-3 at 2.5"


def test_renderer_is_differentiable_in_every_parameter():
    p = {k: v.clone().requires_grad_() for k, v in batch(GALAXIES[:2]).items()}
    weights = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))  # breaks symmetries
    (SersicRenderer(64, 0.2)(p) * weights).sum().backward()
    for name in PARAMETERS:
        assert torch.isfinite(p[name].grad).all() and (p[name].grad != 0).all(), name


def test_sersic_decoder_moves_only_the_physical_image(survey_run, survey_dataset, tmp_path, caplog):
    """Moving supervised latents changes the decoded image by what the renderer draws for the
    moved parameters and nothing else (the residual light depends on the free latents only);
    with the free latents at zero, the decoded image is GalSim's galaxy of the latents'
    parameters, to the renderer's accuracy."""
    run = tmp_path / "sersic"
    caplog.set_level("INFO", logger="galcae.train")
    cfg = dataclasses.replace(train_config_of(survey_run), decoder="sersic", epochs=1)
    train_model(survey_dataset.path, run, cfg, init=survey_run)  # the conv model's encoder, a new decoder
    assert "has a conv decoder; its encoder starts a sersic one" in caplog.text
    model = load_model(run, device="cpu")
    net = model.network
    images = survey_dataset.load_images()[:4]
    conditions = {k: survey_dataset.params[k][:4] for k in ("psf_fwhm", "psf_beta")}
    conditions["noise_sigma"] = stamp_noise_sigma(images)
    z = torch.as_tensor(model.encode(images, conditions))
    c = torch.as_tensor(model.condition_input(images, conditions))
    moved = z.clone()
    moved[:, 0] += 0.5  # flux
    moved[:, 3] -= 0.3  # g1
    with torch.no_grad():
        residual_light = model.decode(z.numpy(), conditions) - galaxy(net, z, c)
        decoded = model.decode(moved.numpy(), conditions)
        assert np.abs(decoded - galaxy(net, moved, c) - residual_light).max() < 1e-5 * decoded.max() + 0.01
    moved[:, 7:] = 0  # no residual light without free latents
    decoded = model.decode(moved.numpy(), conditions)
    cfg = load_stage("simulate", "paper", ["stamp_size=32", "psf.profile=moffat"])
    physical = model.scaling.to_physical(moved[:, :7].numpy())
    for i in range(4):
        theta = {k: float(v[i]) for k, v in physical.items()}
        expected = render(cfg.for_galaxy({k: conditions[k][i] for k in conditions}), theta)
        assert np.abs(decoded[i] - expected).max() < 5e-3 * expected.max() + 0.05, i


def test_sersic_decoder_needs_all_seven_parameters_and_the_psf():
    with pytest.raises(ConfigError, match="decoder.*add sersic_n, g1, g2, x, y, psf_fwhm, psf_beta"):
        TrainConfig(decoder="sersic", supervised=("flux", "half_light_radius"))
    with pytest.raises(ConfigError, match="decoder.*'gan' is not one of"):
        TrainConfig(decoder="gan")


def test_renderer_draws_galsim_gaussian_psf_without_beta():
    g = {**GALAXIES[1], "psf_beta": None}
    p = {k: torch.tensor([v], dtype=torch.float64) for k, v in g.items() if v is not None}
    image = SersicRenderer(64, 0.2)(p)[0].double().numpy()
    expected = render(load_stage("simulate", "paper", ["psf.fwhm=0.5"]), g)
    assert np.abs(image - expected).max() < 3e-3 * expected.max()


def test_closed_form_derivatives_match_finite_differences():
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


def test_batch_fit_is_the_galsim_fit():
    """Same likelihood, same optimum: the batched torch fit and the scipy + GalSim fit agree
    to a small fraction of their errors, and a blank or NaN stamp fails alone."""
    cfg = load_stage("simulate", "survey", ["n_galaxies=40", "seed=21"])
    truth = draw_parameters(cfg)
    rendered = render_chunk(cfg, truth)
    pick = np.flatnonzero(rendered["snr"] > 40)[:3]
    images = np.concatenate([rendered["images"][pick], np.zeros((1, 64, 64), np.float32),
                             np.full((1, 64, 64), np.nan, np.float32)])
    rows = np.concatenate([pick, pick[:2]])
    guess = {k: truth[k][rows] * (1.1 if k == "flux" else 1.0) for k in FIT_PARAMETERS}
    fitted = fit_batch(images, cfg, {k: truth[k][rows] for k in ("psf_fwhm", "psf_beta", "sky_level")}, guess)
    assert list(fitted["status"][3:]) == ["failed: empty or non-finite stamp or guess"] * 2
    assert np.isnan(fitted["flux"][3:]).all()
    for j, i in enumerate(pick):
        galaxy_cfg = cfg.for_galaxy({k: truth[k][i] for k in truth})
        reference = fit_stamp(rendered["images"][i], galaxy_cfg, make_psf(galaxy_cfg),
                              guess={k: v[j] for k, v in guess.items()})
        assert fitted["status"][j] == "ok" and reference["status"] == "ok"
        for name in FIT_PARAMETERS:
            error = reference[f"{name}_err"]
            assert abs(fitted[name][j] - reference[name]) < 0.1 * error, name
            assert fitted[f"{name}_err"][j] == pytest.approx(error, rel=0.05), name
