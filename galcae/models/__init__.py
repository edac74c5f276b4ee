"""Models shipped with galcae, usable by name (``galcae infer --model survey``).

Each is a directory holding ``model.safetensors`` + ``model.json`` (as ``galcae train``
writes them) and ``report.html``, its evaluation on held-out simulations.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..checkpoint import META, ModelError


def shipped_models() -> list[str]:
    """Names of the models in this package."""
    root = resources.files(__name__)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.joinpath(META).is_file())


def resolve_model(name_or_path: str | Path) -> Path:
    """A model path as given, or the directory of the shipped model of that name."""
    path = Path(name_or_path)
    # A model file or run directory wins; any other directory (say ./survey holding a
    # dataset) does not hide the shipped model of that name.
    holds_model = path.is_file() or (path / META).is_file()
    if not holds_model and str(name_or_path) in shipped_models():
        return Path(str(resources.files(__name__).joinpath(str(name_or_path))))
    if path.exists():
        return path
    raise ModelError(f"model '{name_or_path}' is neither a path nor a shipped model "
                     f"({', '.join(shipped_models()) or 'none installed'})")
