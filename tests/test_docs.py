"""The Python examples of the README and of docs/ run as written."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks():
    for page in PAGES:
        for number, match in enumerate(BLOCK.finditer(page.read_text(encoding="utf-8"))):
            yield pytest.param(match.group(1), id=f"{page.relative_to(ROOT)}#{number + 1}")


@pytest.mark.parametrize("code", list(python_blocks()))
def test_python_example_runs(code, tmp_path, monkeypatch, capsys):
    """Each ```python block runs to its end in a fresh directory and prints what it shows."""
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out.strip(), "the example printed nothing"


def test_docs_have_python_examples():
    """The README has at least one Python example (so the test above tests something)."""
    assert any(p.id.startswith("README.md") for p in python_blocks())
