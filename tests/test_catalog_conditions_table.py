"""``--conditions TABLE``: every stamp's observing conditions from a table (FITS, Parquet, CSV)."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import QTable, Table

from galcae.catalog.conditions_table import read_conditions
from galcae.cli import main
from galcae.errors import InputError


def infer(cube, out, *extra) -> int:
    return main(["infer", "--model", "survey", str(cube), "-o", str(out), "--no-refine", *map(str, extra)])


def write_csv(path, columns: dict):
    Table(columns).write(path, format="ascii.csv")
    return path


def psf_columns(truth, order=slice(None)):
    return {"psf_fwhm": truth["psf_fwhm"][order], "psf_beta": truth["psf_beta"][order]}


def test_a_cube_without_a_table_is_not_measured(seeing_cube, tmp_path):
    """The case the table is for: a cube's stamps with no stated PSF are flagged, not measured."""
    cube, _ = seeing_cube
    assert infer(cube, tmp_path / "c.parquet") == 0
    cat = QTable.read(tmp_path / "c.parquet")
    assert np.all(np.isnan(cat["flux"])) and cat["flag_conditions_out_of_range"].all()


def test_a_table_in_input_order_gives_each_stamp_its_psf(seeing_cube, tmp_path):
    """One row per stamp in input order: every stamp measured with its own seeing."""
    cube, truth = seeing_cube
    table = write_csv(tmp_path / "psf.csv", psf_columns(truth))
    assert infer(cube, tmp_path / "c.parquet", "--conditions", table) == 0
    cat = QTable.read(tmp_path / "c.parquet")
    np.testing.assert_allclose(cat["psf_fwhm"].value, truth["psf_fwhm"])
    np.testing.assert_allclose(cat["psf_beta"], truth["psf_beta"])
    assert not cat["flag_conditions_out_of_range"].any()
    assert np.all(np.abs(cat["flux"].value / truth["flux"] - 1) < 0.2)


def test_rows_matched_by_id_give_the_same_catalog(seeing_cube, tmp_path):
    """A shuffled table with an id column measures exactly as the table in order."""
    cube, truth = seeing_cube
    order = np.array([3, 0, 5, 1, 4, 2])
    write_csv(tmp_path / "ordered.csv", psf_columns(truth))
    write_csv(tmp_path / "by_id.csv", {"id": order, **psf_columns(truth, order)})
    assert infer(cube, tmp_path / "a.parquet", "--conditions", tmp_path / "ordered.csv") == 0
    assert infer(cube, tmp_path / "b.parquet", "--conditions", tmp_path / "by_id.csv") == 0
    a, b = QTable.read(tmp_path / "a.parquet"), QTable.read(tmp_path / "b.parquet")
    for name in ("flux", "flux_err", "half_light_radius", "psf_fwhm"):
        np.testing.assert_array_equal(a[name], b[name])


def test_rows_matched_by_source_and_index_from_parquet(seeing_cube, tmp_path):
    """A Parquet table naming the input file (its name alone) and each stamp's index."""
    cube, truth = seeing_cube
    order = np.array([5, 4, 3, 2, 1, 0])
    pq.write_table(pa.table({"source": [cube.name] * 6, "index": order, **psf_columns(truth, order)}),
                   tmp_path / "keyed.parquet")
    assert infer(cube, tmp_path / "c.parquet", "--conditions", tmp_path / "keyed.parquet") == 0
    np.testing.assert_allclose(QTable.read(tmp_path / "c.parquet")["psf_fwhm"].value, truth["psf_fwhm"])


def test_the_option_overrides_the_table(seeing_cube, tmp_path):
    """--psf-fwhm wins over the table, which still gives psf_beta."""
    cube, truth = seeing_cube
    table = write_csv(tmp_path / "psf.csv", psf_columns(truth))
    assert infer(cube, tmp_path / "c.parquet", "--conditions", table, "--psf-fwhm", 0.9) == 0
    cat = QTable.read(tmp_path / "c.parquet")
    assert np.all(cat["psf_fwhm"].value == 0.9)
    np.testing.assert_allclose(cat["psf_beta"], truth["psf_beta"])


def test_a_stated_noise_replaces_the_measured_one(seeing_cube, tmp_path):
    """A noise_sigma column is used as given, not measured on the stamp."""
    cube, truth = seeing_cube
    table = write_csv(tmp_path / "psf.csv", {**psf_columns(truth), "noise_sigma": np.full(6, 20.0)})
    assert infer(cube, tmp_path / "c.parquet", "--conditions", table) == 0
    assert np.all(QTable.read(tmp_path / "c.parquet")["noise_sigma"].value == 20.0)


def test_a_fits_table_is_read(seeing_cube, tmp_path):
    """FITS binary tables are conditions tables too."""
    _, truth = seeing_cube
    Table(psf_columns(truth)).write(tmp_path / "psf.fits")
    np.testing.assert_allclose(read_conditions(tmp_path / "psf.fits")["psf_fwhm"], truth["psf_fwhm"])


@pytest.mark.parametrize("columns, message", [
    ({"psf_fwhm": [0.8, 0.9], "seeing": [1, 2]}, "unknown column 'seeing'"),
    ({"id": [0, 1]}, "no condition column"),
    ({"psf_fwhm": [0.8, np.nan]}, "column 'psf_fwhm' row 1 is nan"),
    ({"psf_fwhm": [0.8, -1.0]}, "column 'psf_fwhm' row 1 is -1.0, outside"),
    ({"source": ["a.fits", "a.fits"], "psf_fwhm": [0.8, 0.9]}, "give both or neither"),
])
def test_a_malformed_table_is_refused_naming_the_column(tmp_path, columns, message):
    """Unknown columns, no condition, non-finite or impossible values, half a key: one line."""
    with pytest.raises(InputError, match=message):
        read_conditions(write_csv(tmp_path / "t.csv", columns))


def test_an_empty_cell_is_refused_naming_its_row(tmp_path):
    """A missing value in a CSV (an id, say) is not read as a number: one line naming the cell."""
    (tmp_path / "t.csv").write_text("id,psf_fwhm\n0,0.8\n,0.9\n")
    with pytest.raises(InputError, match="column 'id' row 1 is empty"):
        read_conditions(tmp_path / "t.csv")


def test_a_table_of_another_format_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text("psf_fwhm\n0.8\n")
    with pytest.raises(InputError, match="is .fits, .parquet or .csv"):
        read_conditions(tmp_path / "t.txt")


@pytest.mark.parametrize("rows, message", [
    (slice(0, 5), "5 rows for 6 stamps"),
    (np.array([0, 1, 2, 3, 4, 5, 5]), "7 rows for 6 stamps"),
])
def test_missing_or_extra_rows_stop_the_run_in_one_line(seeing_cube, tmp_path, capsys, rows, message):
    """A table that does not have one row per stamp is refused before any stamp is measured."""
    cube, truth = seeing_cube
    table = write_csv(tmp_path / "t.csv", {"psf_fwhm": truth["psf_fwhm"][rows], "psf_beta": truth["psf_beta"][rows]})
    assert infer(cube, tmp_path / "c.parquet", "--conditions", table) == 1
    err = capsys.readouterr().err
    assert message in err and str(table) in err and err.count("\n") == 1
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize("ids, message", [([0, 1, 2, 3, 4], "no row for id 5"),
                                          ([0, 1, 2, 3, 4, 5, 9], "row for id 9 matches no stamp"),
                                          ([0, 1, 2, 3, 4, 4], "id 4 appears twice")])
def test_ids_must_name_every_stamp_once(seeing_cube, tmp_path, capsys, ids, message):
    cube, _ = seeing_cube
    table = write_csv(tmp_path / "t.csv", {"id": ids, "psf_fwhm": np.full(len(ids), 0.8)})
    assert infer(cube, tmp_path / "c.parquet", "--conditions", table) == 1
    assert message in capsys.readouterr().err


def test_the_classical_fit_takes_the_table_and_measures_the_sky(seeing_cube, tmp_path):
    """`galcae fit --conditions`: each stamp's PSF from the table, its sky from its measured noise."""
    cube, truth = seeing_cube
    table = write_csv(tmp_path / "psf.csv", psf_columns(truth))
    assert main(["fit", str(cube), "-o", str(tmp_path / "f.parquet"), "--config", "survey",
                 "--conditions", str(table)]) == 0
    cat = QTable.read(tmp_path / "f.parquet")
    assert not cat["flag_fit_failed"].any()
    pulls = np.abs(cat["flux"].value - truth["flux"]) / cat["flux_err"].value
    assert np.all(pulls < 4), pulls
