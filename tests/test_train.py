import json

import numpy as np
import pytest
import torch

from galcae.checkpoint import ModelError, load_model
from galcae.config import ConfigError
from galcae.dataset import Dataset
from galcae.train import train_model

from conftest import tiny_train


def test_run_directory_holds_model_history_split_and_figure(tiny_run):
    """A run writes weights, model.json with preprocessing and provenance, history and loss.png."""
    for name in ("model.safetensors", "model.json", "history.json", "split.json", "state.safetensors", "loss.png"):
        assert (tiny_run / name).is_file(), name
    meta = json.loads((tiny_run / "model.json").read_text())
    for key in ("architecture", "normalization", "parameter_scaling", "train_config", "dataset"):
        assert key in meta
    assert meta["dataset"]["simulate"]["stamp_size"] == 32 and meta["epoch"] == 1
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["test"]) == round(64 / 11) and not set(split["test"]) & set(split["train"])


def test_model_round_trips_through_save_and_load(tiny_run, tiny_dataset):
    """A loaded model encodes and decodes exactly as the saved one did."""
    images = tiny_dataset.load_images()[:5]
    first, second = load_model(tiny_run), load_model(tiny_run / "model.json")
    np.testing.assert_array_equal(first.encode(images), second.encode(images))
    assert set(first.predict(images)) == {"flux", "half_light_radius", "latents"}
    recon = first.reconstruct(images)
    assert recon.shape == images.shape and np.isfinite(recon).all()


def test_corrupt_or_mismatched_weights_are_refused(tiny_run, tmp_path):
    """Damaged weights, a weights file from another run, or broken JSON give a ModelError."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match"):
        load_model(copy)
    (copy / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(copy)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_existing_run_is_refused(tiny_run, tiny_dataset):
    """Training into a directory that holds a model is refused without --resume/--overwrite."""
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(tiny_dataset.path, tiny_run, tiny_train())


def test_resume_continues_exactly(tiny_dataset, tmp_path, monkeypatch):
    """A run interrupted in epoch 2 and resumed ends with the weights and history of an
    uninterrupted one."""
    import galcae.train as train_module

    straight = train_model(tiny_dataset.path, tmp_path / "a", tiny_train(epochs=2))
    real, calls = train_module._evaluate_loss, []

    def crash_in_second_epoch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train_module, "_evaluate_loss", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dataset.path, tmp_path / "b", tiny_train(epochs=2))
    monkeypatch.setattr(train_module, "_evaluate_loss", real)
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 1
    # A run saved before a config key existed resumes: the missing key is its default.
    meta_path = tmp_path / "b" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["train_config"]["head_hidden"]
    meta_path.write_text(json.dumps(meta))
    resumed = train_model(tiny_dataset.path, tmp_path / "b", tiny_train(epochs=2), resume=True)
    for (name, p), q in zip(straight.network.state_dict().items(), resumed.network.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_resume_with_another_config_is_refused(tiny_run, tiny_dataset):
    """--resume with a changed hyper-parameter names the key that differs."""
    with pytest.raises(ConfigError, match="lambda_l1"):
        train_model(tiny_dataset.path, tiny_run, tiny_train(lambda_l1=0.5), resume=True)


def test_fine_tuning_starts_from_the_init_model(tiny_run, tiny_dataset, tmp_path):
    """--init takes the starting model's weights and preprocessing and records it; a network
    of another shape, a different supervised set, or --init with --resume is refused."""
    start = load_model(tiny_run)
    # A negligible learning rate: the tuned weights must still be the starting model's.
    tuned = train_model(tiny_dataset.path, tmp_path / "tuned",
                        tiny_train(learning_rate=1e-8), init=tiny_run)
    assert tuned.normalization == start.normalization and tuned.scaling == start.scaling
    assert tuned.meta["init"]["model"] == str(tiny_run)
    assert tuned.epochs_trained == start.epochs_trained + 1
    for (name, p), q in zip(start.network.state_dict().items(), tuned.network.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    with pytest.raises(ConfigError, match="--init.*channels"):
        train_model(tiny_dataset.path, tmp_path / "x", tiny_train(channels=(8, 16)), init=tiny_run)
    with pytest.raises(ConfigError, match="--init.*supervised"):
        train_model(tiny_dataset.path, tmp_path / "y",
                    tiny_train(supervised=("half_light_radius", "flux")), init=tiny_run)
    with pytest.raises(ConfigError, match="--init.*--resume"):
        train_model(tiny_dataset.path, tmp_path / "tuned", tiny_train(), init=tiny_run, resume=True)


def test_training_skips_galaxies_that_failed_to_render(tiny_dataset, tmp_path):
    """Galaxies with a non-ok status never enter the split."""
    import shutil

    import pyarrow.parquet as pq

    copy = tmp_path / "data"
    shutil.copytree(tiny_dataset.path, copy)
    table = pq.read_table(copy / "params.parquet")
    status = table.column("status").to_numpy(zero_copy_only=False).copy()
    status[:10] = "GalSimFFTSizeError: too big"
    table = table.set_column(table.column_names.index("status"), table.schema.field("status"),
                             [status.tolist()])
    pq.write_table(table, copy / "params.parquet")
    train_model(copy, tmp_path / "run", tiny_train())
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert min(split["train"] + split["test"]) >= 10
    assert len(Dataset.open(copy).usable) == 54
