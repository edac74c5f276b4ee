"""Hostile input and faults: one clear line, no silent wrong answer, nothing lost, no code run.

One test per class of the red-team campaign (``tools/hostile_campaign.py`` re-runs the
whole campaign through the command line).
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from astropy.io import fits
from astropy.table import QTable
from safetensors.torch import load_file, save_file

from galcae import distributed
from galcae import train as train_module
from galcae.catalog import chunks, writers
from galcae.checkpoint import ModelError, load_model, load_state, save_model, save_state, sha256_of
from galcae.cli import main
from galcae.dataset import Dataset, DatasetError
from galcae.outputs import lock_path, output_lock

from conftest import interrupt_in_second_epoch, tiny_train

TINY_TRAIN = ["epochs=1", "batch_size=16"]  # conftest.tiny_train() on the command line


def one_line_error(capsys) -> str:
    """The error output of the last command, checked to be one line without a traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("galcae: error:"), err
    return err


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def copy(path, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(path, target)
    return target


@pytest.fixture()
def stamps_cube(tiny_dataset, tmp_path):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(tiny_dataset.load_images(np.arange(4))).writeto(path)
    return path


# --- security -----------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creating the marker is the "code" that must not run


def test_resume_does_not_unpickle_a_hostile_state(tiny_run, tiny_dataset, tmp_path):
    """A run directory handed over with a pickle in state.pt cannot run it on --resume."""
    run = copy(tiny_run, tmp_path)
    (run / train_module.STATE).unlink()
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Payload(str(marker)), "epoch": 1}, run / train_module.LEGACY_STATE)
    with pytest.raises(ModelError, match="state.pt cannot be read safely"):
        train_module.train_model(tiny_dataset.path, run, tiny_train(), resume=True)
    assert not marker.exists()


def test_training_state_round_trips_without_pickle(tmp_path):
    """The optimizer state is tensors plus JSON: int keys, tuples, None and tensors come back."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "batch_order": torch.Generator().get_state(), "epoch": 3}
    save_state(tmp_path / "state.safetensors", state)
    back = load_state(tmp_path / "state.safetensors")
    assert back["epoch"] == 3 and torch.equal(back["batch_order"], state["batch_order"])
    assert set(back["optimizer"]["state"]) == {0, 1}
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    opt.load_state_dict(back["optimizer"])  # accepted as is
    assert b"\x80" not in (tmp_path / "state.safetensors").read_bytes()[:8]  # not a pickle


def test_dataset_config_with_python_tag_is_refused_without_running(tiny_dataset, tmp_path, capsys):
    """A dataset's config.yaml with a !!python tag is one line naming the file; nothing runs."""
    data = copy(tiny_dataset.path, tmp_path)
    marker = tmp_path / "pwned"
    (data / "config.yaml").write_text(f"simulate: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", str(data), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "config.yaml" in one_line_error(capsys) and not marker.exists()
    (data / "config.yaml").write_text("simulate: [unclosed\n")
    assert main(["train", str(data), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "config.yaml is not valid YAML" in one_line_error(capsys)


def test_binary_config_file_is_one_line_naming_it(tmp_path, capsys):
    """Bytes that are not text, given as a config, are named in one line."""
    config = tmp_path / "noise.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    assert main(["simulate", str(config), "-o", str(tmp_path / "data")]) == 1
    assert "noise.yaml is not a text" in one_line_error(capsys)


# --- locks, overlaps and atomic replacement -------------------------------------------------------


def test_output_held_by_a_live_process_is_refused(tiny_run, stamps_cube, tmp_path, capsys):
    """A second writer of the same catalog is refused while the first holds its lock."""
    out = tmp_path / "cat.parquet"
    with output_lock(out):
        assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(out)]) == 1
        assert "is being written by process" in one_line_error(capsys)
        assert not out.exists() and not (tmp_path / "cat.parquet.parts").exists()
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(out)]) == 0
    assert not lock_path(out).exists()


def test_lock_of_a_dead_process_is_taken_over(tiny_run, stamps_cube, tmp_path):
    """A lock left by a killed run (its process gone) does not block the next run."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "cat.parquet"
    import socket

    lock_path(out).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(out)]) == 0
    assert out.exists() and not lock_path(out).exists()


def test_simulate_into_a_locked_output_keeps_the_finished_dataset(tmp_path, capsys):
    """A second simulate on an output being written is refused, even with --overwrite."""
    data = tmp_path / "data"
    args = ["simulate", "paper", "-o", str(data), "n_galaxies=4", "stamp_size=16"]
    assert main(args) == 0
    before = sha(data / "params.parquet")
    with output_lock(data):
        assert main([*args, "seed=5", "--overwrite"]) == 1
        assert "is being written" in one_line_error(capsys)
    assert sha(data / "params.parquet") == before


def test_outputs_that_are_inputs_are_refused(tiny_run, stamps_cube, tiny_dataset, tmp_path, capsys):
    """--reconstruct equal to -o, -o equal to an input cube, and a run inside its dataset."""
    before = sha(stamps_cube)
    out = tmp_path / "x.fits"
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(out), "--reconstruct", str(out)]) == 1
    assert "-o and --reconstruct are the same path" in one_line_error(capsys)
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(stamps_cube), "--overwrite"]) == 1
    assert "would overwrite the input" in one_line_error(capsys) and sha(stamps_cube) == before
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(tmp_path / "c.fits"),
                 "--reconstruct", str(stamps_cube), "--overwrite"]) == 1
    assert "would overwrite the input" in one_line_error(capsys) and sha(stamps_cube) == before
    assert main(["train", str(tiny_dataset.path), "-o", str(tiny_dataset.path / "run"), *TINY_TRAIN]) == 1
    assert "would overwrite the input" in one_line_error(capsys)
    config = tmp_path / "sim.yaml"
    config.write_text("simulate:\n  n_galaxies: 4\n")
    assert main(["simulate", str(config), "-o", str(config), "--overwrite"]) == 1
    assert "would overwrite the input" in one_line_error(capsys) and config.exists()


def test_interrupted_overwrite_keeps_the_old_run(tiny_dataset, tiny_run, tmp_path, monkeypatch):
    """train --overwrite trains beside the old run: killed in its second epoch, the old model
    is intact; --resume finishes the new run and only then replaces the old one."""
    run = copy(tiny_run, tmp_path)
    before = sha256_of(run / "model.safetensors")
    interrupt_in_second_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_model(tiny_dataset.path, run, tiny_train(epochs=2), overwrite=True)
    assert sha256_of(run / "model.safetensors") == before
    assert json.loads((run / "model.json").read_text())["epoch"] == 1
    assert (tmp_path / ".copy.new" / "model.json").exists()  # the new run, resumable
    monkeypatch.undo()
    model = train_module.train_model(tiny_dataset.path, run, tiny_train(epochs=2), resume=True)
    assert model.meta["epoch"] == 2 and json.loads((run / "model.json").read_text())["epoch"] == 2
    assert not (tmp_path / ".copy.new").exists() and not lock_path(run).exists()


def test_leftovers_of_a_killed_simulate_are_removed(tmp_path):
    """The temporary directory a killed simulate left beside its output goes with the next run."""
    leftover = tmp_path / ".data.tmp-99999999"
    (leftover / "images.zarr").mkdir(parents=True)
    assert main(["simulate", "paper", "-o", str(tmp_path / "data"), "n_galaxies=4", "stamp_size=16"]) == 0
    assert not leftover.exists()


def test_failed_chunk_leaves_no_parts_directory(tiny_run, tiny_dataset, tmp_path, capsys):
    """A chunk that fails (a keyword that is not a number) leaves nothing to resume behind."""
    stamp = tmp_path / "bad.fits"
    fits.PrimaryHDU(tiny_dataset.load_images(np.arange(1))[0],
                    header=fits.Header({"PSFFWHM": "abc"})).writeto(stamp)
    out = tmp_path / "cat.parquet"
    assert main(["infer", str(tiny_run), str(stamp), "-o", str(out)]) == 1
    assert "bad.fits[0]: keyword PSFFWHM = 'abc' is not a number" in one_line_error(capsys)
    assert not (tmp_path / "cat.parquet.parts").exists() and not out.exists()


def test_full_disk_leaves_no_partial_catalog(tiny_run, stamps_cube, tmp_path, monkeypatch, capsys):
    """A catalog that cannot be written (disk full) is one line, and leaves no temporary file."""
    def full(tmp, *args):
        with open(tmp, "wb") as f:
            f.write(b"PAR1")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(writers, "_write_table", full)
    out = tmp_path / "cat.parquet"
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(out)]) == 1
    assert "No space left on device" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.parquet.parts", "cube.fits"]  # resumable


# --- datasets that would train to NaN -------------------------------------------------------------


def test_missing_and_truncated_zarr_chunks_are_named(tiny_dataset, tmp_path, capsys):
    """A lost chunk is refused on open; a damaged one where it is read; both name the chunk."""
    data = copy(tiny_dataset.path, tmp_path)
    chunk = data / "images.zarr" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(DatasetError, match=r"chunk c/1/0/0 \(galaxies 16-31\) cannot be decoded"):
        Dataset.open(data).load_images()
    assert main(["infer", str(tmp_path / "nothing"), str(data), "-o", str(tmp_path / "c.parquet")]) == 1
    capsys.readouterr()
    chunk.unlink()
    assert main(["train", str(data), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "chunk c/1/0/0 (galaxies 16-31) is missing" in one_line_error(capsys)


def test_nan_truth_is_refused_by_train_and_evaluate(tiny_dataset, tiny_run, tmp_path, capsys):
    """A NaN in a truth column is named, not trained on nor scored."""
    data = copy(tiny_dataset.path, tmp_path)
    table = pq.read_table(data / "params.parquet")
    flux = table.column("flux").to_numpy().copy()
    flux[5] = np.nan
    table = table.set_column(table.schema.get_field_index("flux"), table.schema.field("flux"), [flux])
    pq.write_table(table, data / "params.parquet")
    assert main(["train", str(data), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "column 'flux' is not finite for 1 galaxies (first: id 5)" in one_line_error(capsys)
    assert main(["evaluate", str(tiny_run), str(data), "--classical", "0", "--no-remeasure"]) == 1
    assert "column 'flux' is not finite" in one_line_error(capsys)
    pq.write_table(table.drop(["status"]), data / "params.parquet")
    assert main(["train", str(data), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "has no 'status' column" in one_line_error(capsys)


def test_non_finite_loss_stops_training_with_one_line(tiny_dataset, tmp_path, monkeypatch, capsys):
    """A loss that turns NaN stops the run; no NaN model is saved."""
    def nan_loss(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True), {"loss": float("nan")}

    monkeypatch.setattr(train_module, "cae_loss", nan_loss)
    assert main(["train", str(tiny_dataset.path), "-o", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    assert "the loss is nan" in one_line_error(capsys)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_non_finite_weights_are_neither_saved_nor_loaded(tiny_run, tmp_path):
    model = load_model(tiny_run, device="cpu")
    with torch.no_grad():
        next(model.network.parameters())[0] = float("nan")
    with pytest.raises(ModelError, match="not finite"):
        save_model(tmp_path / "nan", model)
    run = copy(tiny_run, tmp_path)
    weights = load_file(str(run / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first][...] = float("inf")
    save_file(weights, str(run / "model.safetensors"))
    meta = json.loads((run / "model.json").read_text())
    meta["weights_sha256"] = sha256_of(run / "model.safetensors")
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not finite"):
        load_model(run)


def test_model_json_without_its_dataset_section_is_one_line(tiny_run, stamps_cube, tmp_path, capsys):
    run = copy(tiny_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    del meta["dataset"]
    (run / "model.json").write_text(json.dumps(meta))
    assert main(["infer", str(run), str(stamps_cube), "-o", str(tmp_path / "c.parquet")]) == 1
    assert "no 'dataset' section" in one_line_error(capsys)


# --- stamps that are not images of the sky ----------------------------------------------------------


def test_impossible_stamps_are_flagged_not_measured(tiny_run, tiny_dataset, tmp_path):
    """-100 ADU everywhere, -1e30 everywhere (a blank) and a stamp with unsubtracted sky are
    flagged; a few -1e30 pixels are masked like NaN and the stamp still measured."""
    images = tiny_dataset.load_images(np.arange(5)).copy()
    images[0] = -100.0
    images[1] = -1e30
    images[2, :3, :5] = -1e30
    images[3] += 1000.0
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(images).writeto(cube)
    assert main(["infer", str(tiny_run), str(cube), "-o", str(tmp_path / "c.parquet")]) == 0
    cat = QTable.read(tmp_path / "c.parquet")
    assert list(cat["flag_unmeasurable"]) == [True, True, False, False, False]
    assert np.all(np.isnan(cat["flux"][:2])) and np.all(np.isfinite(cat["flux"][2:]))
    assert list(cat["flag_nan_pixels"]) == [True, True, True, False, False]
    assert list(cat["flag_background"]) == [False, False, False, True, False]

    assert main(["fit", str(cube), "-o", str(tmp_path / "f.parquet"), "--set", "stamp_size=32"]) == 0
    fitted = QTable.read(tmp_path / "f.parquet")
    assert [s.startswith("failed") for s in fitted["status"][:2]] == [True, True]
    assert fitted["flag_fit_failed"][:2].all() and fitted["status"][4] == "ok"


def test_catalog_suffix_is_case_insensitive_and_decides_the_format(tiny_run, stamps_cube, tmp_path):
    for name, magic in (("cat.PARQUET", b"PAR1"), ("cat.FITS", b"SIMPLE")):
        assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(tmp_path / name)]) == 0
        assert (tmp_path / name).read_bytes()[:len(magic)] == magic, name


def test_impossible_psf_keyword_flags_the_row_when_refining(survey_run, survey_dataset, tmp_path):
    """PSFFWHM = -1 on one stamp, with refinement on: that row is flagged, the others measured."""
    images = survey_dataset.load_images(np.arange(2))
    for i, fwhm in enumerate((-1.0, 0.8)):
        fits.PrimaryHDU(images[i], header=fits.Header({"PSFFWHM": fwhm, "PSFBETA": 3.0})).writeto(
            tmp_path / f"s{i}.fits")
    out = tmp_path / "c.parquet"
    assert main(["infer", str(survey_run), str(tmp_path / "s0.fits"), str(tmp_path / "s1.fits"),
                 "--refine-snr", "0", "-o", str(out)]) == 0
    cat = QTable.read(out)
    assert list(cat["flag_conditions_out_of_range"]) == [True, False]
    assert np.isnan(cat["flux"][0]) and np.isfinite(cat["flux"][1]) and np.isnan(cat["psf_fwhm"][0])


def test_a_chunk_with_nothing_measurable_is_flagged_when_refining(survey_run, tmp_path):
    """Every stamp blank (NaN), refinement on: the refinement gets no stamps, and each row is
    flagged and left NaN instead of the run stopping on an empty array."""
    cube = tmp_path / "blank.fits"
    fits.PrimaryHDU(np.full((2, 32, 32), np.nan, np.float32),
                    header=fits.Header({"PSFFWHM": 0.8, "PSFBETA": 3.0})).writeto(cube)
    out = tmp_path / "c.parquet"
    assert main(["infer", str(survey_run), str(cube), "--refine-snr", "0", "-o", str(out)]) == 0
    cat = QTable.read(out)
    assert list(cat["flag_nan_pixels"]) == [True, True] and np.all(np.isnan(cat["flux"]))


def test_absurd_pixel_values_are_flagged_without_warnings(survey_run, survey_dataset, tmp_path):
    """An infinite pixel and a stamp of 1e30 everywhere: rows flagged, the run quiet (the test
    suite turns numpy's overflow and log10(0) warnings into errors, which main reports as exit 1)."""
    images = survey_dataset.load_images(np.arange(3)).copy()
    images[0, 10, 10] = np.inf
    images[1] = 1e30
    cube = tmp_path / "absurd.fits"
    fits.PrimaryHDU(images, header=fits.Header({"PSFFWHM": 0.8, "PSFBETA": 3.0})).writeto(cube)
    out = tmp_path / "c.parquet"
    assert main(["infer", str(survey_run), str(cube), "--refine-snr", "0", "-o", str(out)]) == 0
    cat = QTable.read(out)
    assert bool(cat["flag_nan_pixels"][0]) and bool(cat["flag_out_of_range"][1] or cat["flag_background"][1])
    assert np.isfinite(cat["flux"][2])


# --- one line, whatever the system says ------------------------------------------------------------


def test_unwritable_outputs_are_one_line(tiny_run, stamps_cube, tmp_path, capsys):
    """An output under a regular file, or in a read-only directory, names the path."""
    (tmp_path / "afile").write_text("x")
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(tmp_path / "afile" / "c.parquet")]) == 1
    assert "afile" in one_line_error(capsys)
    locked = tmp_path / "readonly"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is writable")
        assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(locked / "c.parquet")]) == 1
        assert "Permission denied" in one_line_error(capsys)
    finally:
        locked.chmod(0o755)


def test_unreachable_scheduler_is_one_line(tiny_run, stamps_cube, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1)
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(tmp_path / "c.parquet"),
                 "--scheduler", "tcp://127.0.0.1:9"]) == 1
    assert "--scheduler tcp://127.0.0.1:9: cannot connect" in one_line_error(capsys)


def test_simulation_larger_than_the_machine_is_refused(tmp_path, capsys):
    assert main(["simulate", "paper", "-o", str(tmp_path / "d"), "n_galaxies=1000000000"]) == 1
    assert "n_galaxies=1000000000: the images need about" in one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def test_broken_wcs_and_empty_cube_name_the_file(tiny_run, tiny_dataset, tmp_path, capsys):
    image = tiny_dataset.load_images(np.arange(1))[0]
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 10.0, "CRVAL2": 5.0,
                          "CD1_1": 0.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0})
    fits.PrimaryHDU(image, header=header).writeto(tmp_path / "wcs.fits")
    assert main(["infer", str(tiny_run), str(tmp_path / "wcs.fits"), "-o", str(tmp_path / "c.parquet")]) == 1
    assert "wcs.fits[PRIMARY]: the WCS in the header is invalid" in one_line_error(capsys)
    fits.PrimaryHDU(np.zeros((0, 32, 32), np.float32)).writeto(tmp_path / "empty.fits")
    assert main(["infer", str(tiny_run), str(tmp_path / "empty.fits"), "-o", str(tmp_path / "c.parquet")]) == 1
    assert "empty.fits[PRIMARY]: empty image" in one_line_error(capsys)


def test_unexpected_errors_are_one_line_too(tiny_run, stamps_cube, tmp_path, monkeypatch, capsys):
    """Whatever escapes the checks reaches the user as one line with its type."""
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(chunks, "plan_inputs", broken)
    assert main(["infer", str(tiny_run), str(stamps_cube), "-o", str(tmp_path / "c.parquet")]) == 1
    assert "KeyError: 'surprise' (unexpected" in one_line_error(capsys)


# --- valid input that was refused -----------------------------------------------------------------


def test_scaled_integer_fits_give_the_float_twin_catalog(tiny_run, tiny_dataset, tmp_path):
    """int16 cubes and stamps with BSCALE / BZERO are read scaled, as their float twins."""
    images = tiny_dataset.load_images(np.arange(3))
    scaled = fits.PrimaryHDU(images.copy())
    scaled.scale("int16", bscale=0.5, bzero=1000.0)
    scaled.writeto(tmp_path / "int.fits")
    twin = fits.getdata(tmp_path / "int.fits").astype(np.float32)  # the values the ints hold
    fits.PrimaryHDU(twin).writeto(tmp_path / "float.fits")
    stamp = fits.PrimaryHDU(images[0].copy())
    stamp.scale("int16", bscale=0.5, bzero=1000.0)
    stamp.writeto(tmp_path / "stamp.fits")
    for name in ("int", "float", "stamp"):
        assert main(["infer", str(tiny_run), str(tmp_path / f"{name}.fits"), "-o",
                     str(tmp_path / f"{name}.parquet")]) == 0
    cats = {name: QTable.read(tmp_path / f"{name}.parquet") for name in ("int", "float", "stamp")}
    assert np.array_equal(cats["int"]["flux"], cats["float"]["flux"])
    assert cats["stamp"]["flux"][0].value == pytest.approx(cats["float"]["flux"][0].value, rel=1e-6)
