"""Optional dependencies: what needs an extra says which one, in one line, and the rest works without it."""

import subprocess
import sys

from astropy.io import fits

from galcae.plots import loss_curve

WITHOUT = "import sys; sys.modules[{module!r}] = None; from galcae.cli import main; sys.exit(main({argv!r}))"


def run_without(module: str, argv: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter in which ``module`` cannot be imported."""
    return subprocess.run([sys.executable, "-c", WITHOUT.format(module=module, argv=argv)],
                          capture_output=True, text=True, timeout=120)


def test_evaluate_without_matplotlib_names_the_extra(tmp_path):
    """`galcae evaluate` without matplotlib: one line naming the `evaluate` extra, exit 1."""
    result = run_without("matplotlib", ["evaluate", str(tmp_path / "run"), str(tmp_path / "data")])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "galcae: error: galcae evaluate needs matplotlib, which is not installed: pip install 'galcae[evaluate]'"]


def test_cube_is_measured_without_the_optional_extras(tiny_run, tiny_dataset, tmp_path):
    """`pip install galcae` measures cubes: infer needs neither matplotlib nor scikit-learn."""
    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(tiny_dataset.load_images()[:4]).writeto(cube)
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in ('matplotlib', 'sklearn')]; "
            f"from galcae.cli import main; sys.exit(main(['infer', {str(tiny_run)!r}, {str(cube)!r}, "
            f"'-o', {str(tmp_path / 'c.parquet')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.parquet").exists()


def test_loss_curve_is_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    """Training does not fail for want of a plot: the loss curve is skipped with a warning."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert loss_curve([{"epoch": 1}], tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()
    assert "galcae[evaluate]" in caplog.text


def test_demo_without_scikit_learn_names_the_extra(tmp_path):
    """`galcae demo` needs the `evaluate` extra too."""
    result = run_without("sklearn", ["demo", "-o", str(tmp_path / "demo")])
    assert result.returncode == 1 and "pip install 'galcae[evaluate]'" in result.stderr
