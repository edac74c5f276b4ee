"""Where stamps come from: cubes, stamp files, globs, datasets and fields, read into chunks."""

from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae.cli import main

from conftest import tan_wcs, write_field


def run(*argv) -> int:
    return main(["infer", *map(str, argv)])


@pytest.fixture(scope="module")
def mixed_inputs(dropout_run, tiny_dataset, tmp_path_factory):
    """One catalog of a directory of three 2-D stamps, a glob matching one of them, and a dataset."""
    tmp = tmp_path_factory.mktemp("sources")
    stamps = tmp / "stamps"
    stamps.mkdir()
    for i, image in enumerate(tiny_dataset.load_images(np.arange(3))):
        fits.writeto(stamps / f"g{i}.fits", image)
    out = tmp / "cat.parquet"
    assert run(dropout_run, stamps, str(stamps / "g1*.fits"), tiny_dataset.path, "-o", out) == 0
    return SimpleNamespace(stamps=stamps, cat=QTable.read(out))


def test_stamps_glob_and_dataset_inputs_make_one_catalog(mixed_inputs):
    """A directory, a glob and a dataset give one row per stamp of each, in one catalog."""
    assert len(mixed_inputs.cat) == 3 + 1 + 64


def test_each_row_names_its_stamp_file(mixed_inputs):
    """Rows of stamp files name their file, in the order of the inputs (directory, then glob)."""
    stamps = mixed_inputs.stamps
    assert list(mixed_inputs.cat["source"][:4]) == [str(stamps / f"g{i}.fits") for i in (0, 1, 2, 1)]


def test_a_stamp_measures_alike_from_a_file_and_from_its_dataset(mixed_inputs):
    """The same stamp read from a FITS file and from the dataset gets the same flux."""
    cat = mixed_inputs.cat
    assert cat["flux"][0].value == pytest.approx(cat["flux"][4 + 0].value, rel=1e-5)


def _small_cube(tiny_dataset, path):
    """Three stamps (one with a NaN pixel, one empty) cropped to 24x24 pixels."""
    images = tiny_dataset.load_images(np.arange(3)).copy()
    images[0, 3, 4] = np.nan
    images[1] = 0.0
    fits.writeto(path, images[:, 4:-4, 4:-4])
    return path


def test_stamps_of_another_size_are_refused(dropout_run, tiny_dataset, tmp_path, capsys):
    """Stamps smaller than the model's are refused naming the file, their size and --adapt-size."""
    small = _small_cube(tiny_dataset, tmp_path / "small.fits")
    assert run(dropout_run, small, "-o", tmp_path / "s.parquet") == 1
    err = capsys.readouterr().err
    assert "small.fits[0]" in err and "24x24" in err and "--adapt-size" in err


def test_adapt_size_pads_stamps_and_flags_them(dropout_run, tiny_dataset, tmp_path):
    """With --adapt-size stamps of another size are measured, each row flagged adapted."""
    small = _small_cube(tiny_dataset, tmp_path / "small.fits")
    assert run(dropout_run, small, "-o", tmp_path / "s.parquet", "--adapt-size") == 0
    assert QTable.read(tmp_path / "s.parquet")["flag_adapted"].all()


# --- a field -----------------------------------------------------------------------------------

POSITIONS = [(40.2, 50.7), (110.0, 100.3), (80.5, 3.0)]  # the last at the edge


@pytest.fixture(scope="module")
def field(dropout_run, tmp_path_factory):
    """The catalog of a field with three galaxies, and the field's WCS."""
    tmp = tmp_path_factory.mktemp("field")
    wcs = write_field(tmp / "field.fits", POSITIONS)
    out = tmp / "cat.parquet"
    assert run(dropout_run, tmp / "field.fits", "-o", out) == 0
    return QTable.read(out), wcs


def _nearest(cat, x, y):
    return cat[np.argmin(np.hypot(cat["x_field"].value - (x + 0.5), cat["y_field"].value - (y + 0.5)))]


def test_field_sources_are_detected_and_located_on_the_sky(field):
    """Each galaxy of a field is detected once, with sky coordinates in degrees."""
    cat, _ = field
    assert len(cat) == 3 and str(cat["ra"].unit) == "deg"


def test_a_source_at_the_field_edge_is_flagged_truncated(field):
    """Only the cut-out running over the field's edge is flagged truncated."""
    cat, _ = field
    for x, y in POSITIONS:
        assert bool(_nearest(cat, x, y)["flag_truncated"]) == (y < 16)


def test_field_sources_carry_their_pixel_positions(field):
    """Untruncated sources sit within half a pixel of the truth (galcae's pixel convention)."""
    cat, _ = field
    for x, y in POSITIONS:
        row = _nearest(cat, x, y)
        if row["flag_truncated"]:  # half the light is off the field: the centroid is pulled inwards
            continue
        assert abs(row["x_field"].value - (x + 0.5)) < 0.5 and abs(row["y_field"].value - (y + 0.5)) < 0.5


def test_field_sources_carry_their_sky_positions(field):
    """Untruncated sources' RA and Dec are the WCS's within 0.2 arcsec."""
    cat, wcs = field
    for x, y in POSITIONS:
        row = _nearest(cat, x, y)
        if row["flag_truncated"]:
            continue
        sky = wcs.pixel_to_world(x, y)
        assert abs(row["ra"].value - sky.ra.deg) * 3600 < 0.2 and abs(row["dec"].value - sky.dec.deg) * 3600 < 0.2


# --- inputs that cannot be read --------------------------------------------------------------------


def _not_fits(tmp_path):
    (tmp_path / "notes.fits").write_text("not a FITS file")
    return [tmp_path / "notes.fits"]


def _blank_field(tmp_path):
    fits.writeto(tmp_path / "blank.fits", np.random.default_rng(0).normal(0, 10, (100, 100)).astype(np.float32))
    return [tmp_path / "blank.fits"]


@pytest.mark.parametrize("inputs, message", [
    (_not_fits, "notes.fits: not a readable FITS file"),
    (lambda tmp_path: [tmp_path / "missing.fits"], "missing.fits"),
    (lambda tmp_path: ["CUBE", "--hdu", "SCI"], "no HDU 'SCI'"),
    (_blank_field, "no sources detected"),
], ids=["not_fits", "missing", "no_such_hdu", "no_sources"])
def test_unreadable_inputs_are_one_line_and_leave_nothing(inputs, message, dropout_run, cube, tmp_path, capsys):
    """An unreadable input exits 1 with one line naming the problem, leaving no work directory."""
    argv = [cube if a == "CUBE" else a for a in inputs(tmp_path)]
    assert run(dropout_run, *argv, "-o", tmp_path / "c.parquet") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("galcae: error:") and message in err and "\n" not in err, err
    assert not list(tmp_path.glob("*.parts"))  # a refused input leaves no work directory


def test_sources_far_apart_have_no_neighbour_index(field):
    """No field source lies inside another's cutout: every neighbour_index is -1."""
    cat, _ = field
    assert list(cat["neighbour_index"]) == [-1, -1, -1]


def test_the_neighbour_index_is_the_nearest_detection_inside_the_cutout():
    """The nearest other detection when its centre is inside the cutout (|dx|, |dy| < half),
    else -1."""
    from galcae.catalog.sources import nearest_inside

    x, y = np.array([10.0, 15.0, 60.0, 100.0]), np.array([10.0, 12.0, 10.0, 100.0])
    assert list(nearest_inside(x, y, 32)) == [1, 0, -1, -1]
    assert list(nearest_inside(x, y, 50)) == [1, 0, 1, -1]
    assert list(nearest_inside(x[:1], y[:1], 32)) == [-1]


def test_pixel_scale_checked_only_where_a_celestial_wcs_is():
    """An image's WCS pixel scale must be the model's (2 %); a header without celestial axes
    has none to check (and is not parsed by astropy.wcs)."""
    from galcae.catalog.sources import InputError, celestial_wcs, check_pixel_scale

    assert celestial_wcs(fits.Header({"BUNIT": "adu"}), "cube.fits") is None
    check_pixel_scale(fits.Header({"BUNIT": "adu"}), "cube.fits", 0.2)
    check_pixel_scale(tan_wcs(64, 0.201).to_header(), "cube.fits", 0.2)
    with pytest.raises(InputError, match=r"cube.fits\[SCI\]: pixel scale 0.3 arcsec differs"):
        check_pixel_scale(tan_wcs(64, 0.3).to_header(), "cube.fits[SCI]", 0.2)
