"""Catalog files: the output's suffix decides the format."""

from galcae.cli import main


def test_catalog_of_an_unknown_format_is_refused(dropout_run, cube, tmp_path, capsys):
    """An output that is neither .parquet nor .fits is one line naming the two, leaving nothing."""
    assert main(["infer", str(dropout_run), str(cube), "--samples", "3", "-o", str(tmp_path / "x.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("galcae: error:") and ".parquet or .fits" in err and "\n" not in err, err
    assert not list(tmp_path.glob("*.parts"))  # a refused input leaves no work directory
