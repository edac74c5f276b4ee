"""Training a run: what it writes, resuming, fine-tuning, the split, augmentation."""

import json

import numpy as np
import pytest
import torch

from galcae.config import ConfigError, load_stage
from galcae.physics import render
from galcae.train import dihedral, dihedral_params, train_model

from conftest import interrupt_in_second_epoch, tiny_train


def test_run_directory_holds_model_history_split_and_figure(tiny_run):
    """A run writes weights, model.json, training state, history, split and loss.png."""
    for name in ("model.safetensors", "model.json", "history.json", "split.json", "state.safetensors", "loss.png"):
        assert (tiny_run / name).is_file(), name


def test_model_json_holds_preprocessing_and_provenance(tiny_run):
    """model.json holds the architecture, the normalisation, the scaling, the config and the dataset."""
    meta = json.loads((tiny_run / "model.json").read_text())
    for key in ("architecture", "normalization", "parameter_scaling", "train_config", "dataset"):
        assert key in meta


def test_model_json_records_the_datasets_config_and_the_epoch(tiny_run):
    """The dataset's simulation config and the epochs trained are recorded."""
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["dataset"]["simulate"]["stamp_size"] == 32 and meta["epoch"] == 1


def test_split_holds_out_one_eleventh_disjoint_from_training(tiny_run):
    """split.json holds 1/11 of the galaxies out for testing, none of them trained on."""
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["test"]) == round(64 / 11) and not set(split["test"]) & set(split["train"])


def test_existing_run_is_refused(tiny_run, tiny_dataset):
    """Training into a directory that holds a model is refused without --resume/--overwrite."""
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(tiny_dataset.path, tiny_run, tiny_train())


def test_resume_continues_exactly(tiny_dataset, tmp_path, monkeypatch):
    """A run interrupted in epoch 2 and resumed ends as an uninterrupted one, weights and history."""
    # The interrupted run is also made to look saved before a config key existed.

    straight = train_model(tiny_dataset.path, tmp_path / "a", tiny_train(epochs=2))
    interrupt_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_dataset.path, tmp_path / "b", tiny_train(epochs=2))
    monkeypatch.undo()
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


@pytest.fixture(scope="module")
def tuned(tiny_run, tiny_dataset, tmp_path_factory):
    """The tiny run fine-tuned one epoch at a negligible learning rate (--init)."""
    path = tmp_path_factory.mktemp("runs") / "tuned"
    model = train_model(tiny_dataset.path, path, tiny_train(learning_rate=1e-8), init=tiny_run)
    return path, model


def test_fine_tuning_keeps_the_init_models_preprocessing(tuned, tiny_run):
    """--init takes the starting model's pixel normalisation and parameter scaling."""
    from galcae.checkpoint import load_model

    start = load_model(tiny_run)
    _, model = tuned
    assert model.normalization == start.normalization and model.scaling == start.scaling


def test_fine_tuned_run_records_its_init_model(tuned, tiny_run):
    """model.json names the model a fine-tuned run started from."""
    _, model = tuned
    assert model.meta["init"]["model"] == str(tiny_run)


def test_fine_tuned_run_counts_the_init_models_epochs(tuned, tiny_run):
    """A fine-tuned run's epochs are its own plus its init model's."""
    from galcae.checkpoint import load_model

    _, model = tuned
    assert model.epochs_trained == load_model(tiny_run).epochs_trained + 1


def test_fine_tuning_starts_from_the_init_models_weights(tuned, tiny_run):
    """At a negligible learning rate the tuned weights are still the starting model's."""
    from galcae.checkpoint import load_model

    start = load_model(tiny_run)
    _, model = tuned
    for (name, p), q in zip(start.network.state_dict().items(), model.network.state_dict().values()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("changes, message", [
    ({"channels": (8, 16)}, "--init.*channels"),
    ({"supervised": ("half_light_radius", "flux")}, "--init.*supervised"),
], ids=["channels", "supervised"])
def test_init_of_another_shape_or_supervised_set_is_refused(changes, message, tiny_run, tiny_dataset, tmp_path):
    """--init with a network of another shape or a different supervised set is refused by key."""
    with pytest.raises(ConfigError, match=message):
        train_model(tiny_dataset.path, tmp_path / "x", tiny_train(**changes), init=tiny_run)


def test_init_with_resume_is_refused(tuned, tiny_run, tiny_dataset):
    """--init and --resume together are refused."""
    path, _ = tuned
    with pytest.raises(ConfigError, match="--init.*--resume"):
        train_model(tiny_dataset.path, path, tiny_train(), init=tiny_run, resume=True)


def test_init_from_a_conv_model_starts_a_sersic_decoder_from_its_encoder(sersic_run):
    """--init of a conv model into a sersic-decoder run says the encoder is reused, the decoder new."""
    assert "has a conv decoder; its encoder starts a sersic one (differing: decoder)" in sersic_run.log


@pytest.mark.parametrize("changes, new_decoder", [
    ({"residual_channels": (4, 8, 8), "residual_conditions": False}, True),
    ({"decoder_grid": 3}, False),
], ids=["another_residual_branch", "another_grid_only"])
def test_init_keeps_the_decoders_weights_unless_its_residual_branch_differs(changes, new_decoder, sersic_run,
                                                                           survey_dataset, tmp_path, caplog):
    """--init from a sersic model into a narrower, unconditioned residual branch takes the
    encoder only; into another drawing grid (no weights of its own), everything."""
    import dataclasses
    import logging

    from galcae.train import train_config_of

    cfg = dataclasses.replace(train_config_of(sersic_run.path), epochs=1, **changes)
    with caplog.at_level(logging.INFO, logger="galcae.train"):
        train_model(survey_dataset.path, tmp_path / "run", cfg, init=sersic_run.path)
    said = "(differing: residual_widths, residual_conditions)" in caplog.text
    assert said == new_decoder


def test_training_skips_galaxies_that_failed_to_render(failed_renders, tmp_path):
    """Galaxies with a non-ok status never enter the split."""
    copy = failed_renders
    train_model(copy, tmp_path / "run", tiny_train())
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert min(split["train"] + split["test"]) >= 10


@pytest.fixture(scope="module")
def dihedral_copies():
    x = torch.rand(2, 1, 8, 8)
    return x, [dihedral(x, k) for k in range(8)]


def test_dihedral_transform_0_is_the_identity(dihedral_copies):
    """The first of the 8 flips/rotations leaves the images as they are."""
    x, copies = dihedral_copies
    assert torch.equal(copies[0], x)


def test_dihedral_transforms_keep_the_flux(dihedral_copies):
    """The flips/rotations permute pixels: each image's flux is kept."""
    x, copies = dihedral_copies
    assert all(torch.allclose(c.sum(dim=(-2, -1)), x.sum(dim=(-2, -1))) for c in copies)


def test_dihedral_transforms_are_eight_distinct_copies(dihedral_copies):
    """The 8 flips/rotations of an image are all different."""
    _, copies = dihedral_copies
    assert len({c.numpy().tobytes() for c in copies}) == 8


def test_flipped_and_rotated_images_keep_matching_their_transformed_truth():
    """Augmentation transforms x, y, g1, g2 exactly as the pixels move."""
    cfg = load_stage("simulate", "paper", [])
    theta = {"flux": 1e4, "half_light_radius": 0.8, "sersic_n": 1.5, "g1": 0.3, "g2": 0.15,
             "x": 29.3, "y": 34.1}
    image = render(cfg, theta)
    for k in range(8):
        moved = dihedral(torch.as_tensor(image)[None, None], k)[0, 0].numpy()
        truth = dihedral_params({n: np.array([v]) for n, v in theta.items()}, k, 64)
        expected = render(cfg, {n: float(v[0]) for n, v in truth.items()})
        assert np.abs(moved - expected).max() < 1e-5 * image.max(), k


@pytest.mark.parametrize("changes, key", [({"channels": (8,) * 5}, "channels"),
                                          ({"residual_channels": (8,) * 5}, "residual_channels")])
def test_a_stamp_size_the_poolings_or_the_residual_branch_cannot_halve_is_refused(changes, key):
    """48-pixel stamps cannot be halved five times, by the encoder or by the residual branch."""
    from types import SimpleNamespace

    from galcae.config import TrainConfig
    from galcae.train import _check_stamp_size

    dataset = SimpleNamespace(path="d48", config=SimpleNamespace(stamp_size=48))
    with pytest.raises(ConfigError, match=f"d48: stamp_size 48 is not divisible by 32, as the 5 {key} need"):
        _check_stamp_size(dataset, TrainConfig(**changes))
    _check_stamp_size(SimpleNamespace(path="d64", config=SimpleNamespace(stamp_size=64)), TrainConfig(**changes))
