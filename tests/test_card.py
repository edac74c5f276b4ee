"""The model card, and the models shipped with galcae found by name."""

import json
from pathlib import Path

import pytest

from galcae.card import MODEL_DEFAULT, model_paths, read_card, resolve_model
from galcae.checkpoint import load_model
from galcae.cli import main
from galcae.errors import ModelError
from galcae.evaluate.report import CARD_FIELDS


def test_unknown_model_name_is_one_line(tmp_path, capsys):
    """A --model that is neither a path nor a shipped model's name is refused in one line."""
    assert main(["infer", "--model", "no-such-model", "x.fits", "-o", str(tmp_path / "c.parquet")]) == 1
    assert "neither a path nor a shipped model" in capsys.readouterr().err


def test_a_directory_named_like_a_shipped_model_does_not_hide_it(tmp_path, monkeypatch):
    """The README's layout (survey/dataset, survey/run) leaves a ./survey directory."""
    (tmp_path / "survey" / "dataset").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model("survey") != Path("survey")
    assert load_model("survey", device="cpu").supervised[0] == "flux"


def test_a_run_without_a_refine_calibration_has_no_refinement_policy(survey_run):
    """A model trained without --refine-calibration neither refines by default nor rescales fit errors."""
    card = load_model(survey_run, device="cpu").card
    assert card.refinement.calibration is None and card.refinement.min_snr is None


def test_the_shipped_card_states_its_refinement_policy():
    """The survey model refines above S/N 25 by default, with a recalibration of the fit's errors."""
    card = load_model("survey", device="cpu").card
    assert card.refine_snr_for(MODEL_DEFAULT) == 25.0 and card.refinement.calibration is not None
    assert card.refine_snr_for(None) is None and card.refine_snr_for(40.0) == 40.0


def test_the_shipped_card_says_what_the_model_is_and_where_not_to_trust_it():
    """Every sentence of the model card is there, and none names a build machine's path."""
    card = load_model("survey", device="cpu").card
    sentences = card.provenance.shipped["card"]
    assert set(sentences) == {key for key, _ in CARD_FIELDS}
    assert all(len(text) > 40 for text in sentences.values())
    assert "/tmp" not in json.dumps(card.raw)


def test_the_card_is_a_value():
    """Two readings of the same model.json give equal, hashable cards (for Dask and caches)."""
    weights, meta = model_paths("survey")
    assert read_card(meta) == read_card(meta) and hash(read_card(meta)) == hash(read_card(meta))


def test_the_card_carries_the_training_set_the_fits_need():
    """The refinement and the classical fit use the training set's stamp, pixels and noise model."""
    card = load_model("survey", device="cpu").card
    assert card.training_set.stamp_size == card.stamp_size == 64 and card.pixel_scale == 0.2
    assert card.training_set.noise.gain == 1.0 and card.training_set.psf.profile == "moffat"


def test_a_model_json_of_another_format_is_refused(tmp_path):
    """A JSON file that is not a galcae model description is a ModelError naming it."""
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": "something-else/3"}))
    with pytest.raises(ModelError, match=r"model\.json is not a galcae model description"):
        read_card(path)


def test_a_model_json_without_a_section_is_refused(tmp_path):
    """A galcae model.json missing one of its sections names the section."""
    _, meta = model_paths("survey")
    data = json.loads(meta.read_text())
    del data["normalization"]
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="no 'normalization' section"):
        read_card(tmp_path / "model.json")


@pytest.mark.parametrize("floors", [{"flux": -0.01}, {"colour": 0.01}, {"flux": "1%"}, [0.01]])
def test_a_model_error_floor_that_is_not_one_is_refused(tmp_path, floors):
    """A model-error floor that is negative, not a number, or of no fitted parameter: one line."""
    _, meta = model_paths("survey")
    data = json.loads(meta.read_text())
    data["refine_model_error"] = {"floors": floors}
    (tmp_path / "model.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"model\.json: .*refine_model_error\.floors"):
        read_card(tmp_path / "model.json")


def test_the_shipped_card_has_model_error_floors_with_their_provenance():
    card = read_card(model_paths("survey")[1])
    assert set(card.refinement.model_error) == {"flux", "half_light_radius"}
    assert "realistic_psf.py" in card.raw["refine_model_error"]["calibrated_on"]


def test_the_previous_survey_model_stays_loadable_by_name():
    """survey-v1, the survey model before the realistic retraining, is shipped beside `survey`."""
    old, new = load_model("survey-v1", device="cpu"), load_model("survey", device="cpu")
    assert old.card.provenance.shipped["name"] == "survey-v1" and new.card.provenance.shipped["name"] == "survey"
    assert old.supervised == new.supervised
    assert old.card.raw["weights_sha256"] != new.card.raw["weights_sha256"]
    assert old.card.refine_snr_for(MODEL_DEFAULT) == new.card.refine_snr_for(MODEL_DEFAULT) == 25.0
