import json

import pytest

from galcae.cli import main

TINY = ["n_galaxies=24", "stamp_size=32", "ranges.x=[14,18]", "ranges.y=[14,18]",
        "ranges.half_light_radius=[0.3,1.0]"]


def test_simulate_train_evaluate_through_main(tmp_path, capsys):
    """The three stages run from the command line and report where their output went."""
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["simulate", "paper", *TINY, "-o", str(data)]) == 0
    assert main(["train", str(data), "-o", str(run), "epochs=1", "batch_size=8"]) == 0
    assert main(["evaluate", str(run), str(data), "--no-remeasure"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 24 galaxies" in out and "PCA all" in out and "report.html" in out
    assert json.loads((run / "eval" / "metrics.json").read_text())["n_test"] == 2


@pytest.mark.parametrize("argv, message", [
    (["simulate", "paper", "n_galaxy=3", "-o", "{tmp}/d"], "unknown config key 'n_galaxy'"),
    (["simulate", "paper", "psf.fwhm=-1", "-o", "{tmp}/d"], "psf.fwhm"),
    (["simulate", "nosuchpreset", "-o", "{tmp}/d"], "neither a file nor a preset"),
    (["train", "{tmp}/missing", "-o", "{tmp}/run"], "does not exist"),
    (["train", "{tmp}", "-o", "{tmp}/run"], "not a galcae dataset"),
    (["evaluate", "{tmp}/norun", "{tmp}"], "does not exist"),
])
def test_bad_input_gives_one_line_and_exit_1(argv, message, tmp_path, capsys):
    """Each bad input gives exit code 1 and a single 'galcae: error:' line naming the problem."""
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("galcae: error:") and message in err and "\n" not in err


def test_existing_outputs_are_not_overwritten(tmp_path, capsys):
    """A second simulate or train onto existing outputs is refused and keeps them."""
    data = tmp_path / "data"
    assert main(["simulate", "paper", *TINY, "-o", str(data)]) == 0
    stamp = (data / "params.parquet").stat().st_mtime_ns
    assert main(["simulate", "paper", *TINY, "-o", str(data)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (data / "params.parquet").stat().st_mtime_ns == stamp


def test_usage_errors_exit_2(capsys):
    """A malformed command line exits 2 with click's message on one line, pointing to --help."""
    assert main(["simulate"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Missing argument" in err and "galcae simulate --help" in err and "\n" not in err


def test_help_exits_0(capsys):
    """``galcae --help`` prints the usage and exits 0."""
    assert main(["--help"]) == 0
    assert "Usage:" in capsys.readouterr().out
