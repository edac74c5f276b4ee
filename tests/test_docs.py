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


def test_the_cli_reference_is_what_the_cli_prints():
    """docs/cli.md is `python tools/cli_reference.py`'s output: no option is left undocumented."""
    reference = runpy.run_path(str(ROOT / "tools" / "cli_reference.py"))["reference"]
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == reference(), \
        "regenerate: python tools/cli_reference.py > docs/cli.md"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_relative_links_resolve():
    """Every relative link of the README and docs/ names a file that exists, and an anchor it has."""
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (anchor and file.suffix == ".md" and anchor not in _anchors(file)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
