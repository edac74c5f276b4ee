"""Every error galcae raises on purpose: one class per kind of culprit, each message one line
naming the file, HDU, key or value. ``galcae.cli`` prints them as they are (exit code 1);
anything else reaching the command line is unforeseen and says so."""


class ConfigError(ValueError):
    """A config file, key or value that galcae cannot use."""


class DatasetError(ValueError):
    """A path that is not a usable galcae dataset."""


class ModelError(ValueError):
    """A model file that is missing, corrupt or does not match its ``model.json``."""


class InputError(ValueError):
    """An input that cannot be measured; the message names the file (and HDU)."""


class OutputError(RuntimeError):
    """An output that cannot be written: busy, or the same as an input."""


class ClusterError(RuntimeError):
    """A Dask scheduler that cannot be reached."""


class TrainingError(RuntimeError):
    """Training that cannot go on (a non-finite loss)."""


class MissingExtraError(RuntimeError):
    """A part of galcae whose optional dependencies are not installed."""


def require(module: str, extra: str, what: str):
    """``module`` imported, or a :class:`MissingExtraError` saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module.split('.')[0]}, which is not installed: "
                                f"pip install 'galcae[{extra}]'") from None


#: What the command line reports as the culprit's own message.
ERRORS = (ConfigError, DatasetError, ModelError, InputError, OutputError, ClusterError, TrainingError,
          MissingExtraError)
