"""Saving and loading a trained model: the same numbers back, damage refused."""

import shutil

import numpy as np
import pytest

from galcae.checkpoint import ModelError, load_model
from galcae.cli import main


@pytest.fixture(scope="module")
def loaded(tiny_run, tiny_dataset):
    """The tiny run loaded from its directory and from its model.json, and five stamps."""
    return load_model(tiny_run), load_model(tiny_run / "model.json"), tiny_dataset.load_images()[:5]


def test_model_loads_the_same_from_its_directory_and_its_json(loaded):
    """A model loaded by run directory or by model.json encodes identically."""
    first, second, images = loaded
    np.testing.assert_array_equal(first.encode(images), second.encode(images))


def test_loaded_model_predicts_its_supervised_parameters(loaded):
    """``predict`` gives each supervised parameter and the latents."""
    first, _, images = loaded
    assert set(first.predict(images)) == {"flux", "half_light_radius", "latents"}


def test_loaded_model_reconstructs_finite_images(loaded):
    """``reconstruct`` gives finite images of the input's shape."""
    first, _, images = loaded
    recon = first.reconstruct(images)
    assert recon.shape == images.shape and np.isfinite(recon).all()


def _copy(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def test_damaged_weights_are_refused(tiny_run, tmp_path):
    """Weights whose bytes no longer match model.json give a ModelError."""
    copy = _copy(tiny_run, tmp_path)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match"):
        load_model(copy)


def test_broken_model_json_is_refused(tiny_run, tmp_path):
    """A model.json that is not JSON gives a ModelError naming it."""
    copy = _copy(tiny_run, tmp_path)
    (copy / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(copy)


def test_missing_model_is_refused(tmp_path):
    """A model path that does not exist gives a ModelError."""
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_weights_changed_after_training_are_refused_by_infer(dropout_run, cube, tmp_path, capsys):
    """A weights file that no longer matches model.json's SHA-256 stops `galcae infer`."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.json", "model.safetensors"):
        (broken / name).write_bytes((dropout_run / name).read_bytes())
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    assert main(["infer", str(broken), str(cube), "-o", str(tmp_path / "c.parquet")]) == 1
    assert "SHA-256 differs" in capsys.readouterr().err
