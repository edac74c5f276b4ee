import subprocess
import sys


def test_api_mirrors_the_cli():
    """The package exposes one function per stage, plus model loading, after any submodule import."""
    import galcae.evaluate  # noqa: F401  (submodules must not shadow the API names)
    import galcae.train  # noqa: F401

    for name in ("load_config", "simulate_dataset", "train_model", "evaluate_run", "load_model"):
        assert callable(getattr(galcae, name)), name


def test_import_does_no_work():
    """Importing galcae loads neither torch nor GalSim and configures no logging handler."""
    code = ("import logging, sys, galcae; "
            "print('torch' in sys.modules, 'galsim' in sys.modules, len(logging.getLogger().handlers))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "0"]
