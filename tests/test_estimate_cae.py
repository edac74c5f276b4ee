"""Measuring stamps with a trained CAE: values, errors, MC dropout."""

import numpy as np

from galcae.checkpoint import load_model
from galcae.cli import main
from galcae.config import load_stage
from galcae.estimate.cae import measure
from galcae.simulate import draw_parameters, render_chunk


def test_shipped_survey_model_recovers_flux_and_radius_within_its_errors():
    """The shipped model, loaded by name, finds most fresh galaxies' truth within 3 of its sigmas."""
    model = load_model("survey", device="cpu")
    cfg = load_stage("simulate", "survey", ["n_galaxies=12", "seed=99", "ranges.flux=[5000, 50000]",
                                            "ranges.half_light_radius=[0.4, 1.5]"])
    truth = draw_parameters(cfg)
    images = render_chunk(cfg, truth)["images"]
    out = measure(model, images, {"psf_fwhm": truth["psf_fwhm"], "psf_beta": truth["psf_beta"]})
    for name in ("flux", "half_light_radius"):
        pulls = np.abs(out[name] - truth[name]) / out[f"{name}_err"]
        assert np.sum(pulls < 3) >= 10, (name, pulls)


def test_mc_dropout_on_a_model_without_dropout_is_refused(tiny_run, cube, tmp_path, capsys):
    """--samples > 1 on a model trained without dropout is refused, naming dropout."""
    assert main(["infer", str(tiny_run), str(cube), "--samples", "4", "-o", str(tmp_path / "c.parquet")]) == 1
    assert "dropout" in capsys.readouterr().err
