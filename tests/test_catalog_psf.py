"""``--psf FILE``: PSF images, one for all stamps or one per stamp, checked and measured."""

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable, Table

from galcae.catalog.psf import checked_psf, psf_conditions, read_psf
from galcae.cli import main
from galcae.errors import InputError

SIZE = 25  # pixels per side of the PSF images


def moffat(fwhm: float, beta: float, offset=(0.0, 0.0)) -> np.ndarray:
    """A Moffat PSF image as GalSim draws it (with the pixel), at the survey's 0.2″ pixels."""
    return galsim.Moffat(beta=beta, fwhm=fwhm).drawImage(nx=SIZE, ny=SIZE, scale=0.2, offset=offset).array


@pytest.fixture(scope="module")
def psf_cube(seeing_cube, tmp_path_factory):
    """One PSF image per stamp of the seeing cube, in a file's HDU named PSF."""
    _, truth = seeing_cube
    path = tmp_path_factory.mktemp("psf") / "psfs.fits"
    images = np.stack([moffat(f, b) for f, b in zip(truth["psf_fwhm"], truth["psf_beta"])])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(images, name="PSF")]).writeto(path)
    return path


def infer(cube, out, *extra) -> int:
    return main(["infer", "--model", "survey", str(cube), "-o", str(out), "--no-refine", *map(str, extra)])


def test_moffat_parameters_are_measured_from_the_image():
    """The Moffat fitted to a GalSim Moffat image, even a little off centre, is that Moffat."""
    for fwhm, beta, offset in ((0.6, 2.6, (0.4, 0.2)), (0.83, 3.2, (0.0, 0.0)), (1.1, 4.5, (-0.3, 0.2))):
        measured = psf_conditions(checked_psf(moffat(fwhm, beta, offset), "psf", 64), 0.2)
        assert measured[0] == pytest.approx(fwhm, rel=2e-3) and measured[1] == pytest.approx(beta, rel=1e-2)


def test_a_psf_cube_gives_each_stamp_its_seeing(seeing_cube, psf_cube, tmp_path):
    """One PSF image per stamp (the file's PSF HDU): each stamp measured with its own seeing."""
    cube, truth = seeing_cube
    assert infer(cube, tmp_path / "c.parquet", "--psf", psf_cube) == 0
    cat = QTable.read(tmp_path / "c.parquet")
    np.testing.assert_allclose(cat["psf_fwhm"].value, truth["psf_fwhm"], rtol=2e-3)
    np.testing.assert_allclose(cat["psf_beta"], truth["psf_beta"], rtol=1e-2)
    assert not cat["flag_conditions_out_of_range"].any()
    assert np.all(np.abs(cat["flux"].value / truth["flux"] - 1) < 0.2)


def test_one_psf_image_serves_every_stamp(seeing_cube, tmp_path):
    """A 2-D PSF image is every stamp's PSF."""
    cube, _ = seeing_cube
    fits.PrimaryHDU(moffat(0.9, 3.5)).writeto(tmp_path / "psf.fits")
    assert infer(cube, tmp_path / "c.parquet", "--psf", tmp_path / "psf.fits") == 0
    cat = QTable.read(tmp_path / "c.parquet")
    np.testing.assert_allclose(cat["psf_fwhm"].value, 0.9, rtol=2e-3)
    assert len(set(cat["psf_fwhm"].value)) == 1


def test_a_conditions_table_takes_precedence_over_the_psf_image(seeing_cube, psf_cube, tmp_path):
    """Option > table > PSF image: the table's FWHM wins over the image's, the image gives beta."""
    cube, truth = seeing_cube
    Table({"psf_fwhm": np.full(6, 0.75)}).write(tmp_path / "t.csv", format="ascii.csv")
    assert infer(cube, tmp_path / "c.parquet", "--psf", psf_cube, "--conditions", tmp_path / "t.csv") == 0
    cat = QTable.read(tmp_path / "c.parquet")
    assert np.all(cat["psf_fwhm"].value == 0.75)
    np.testing.assert_allclose(cat["psf_beta"], truth["psf_beta"], rtol=1e-2)


def test_a_psf_count_that_is_not_the_stamps_is_one_line(seeing_cube, tmp_path, capsys):
    cube, _ = seeing_cube
    fits.PrimaryHDU(np.stack([moffat(0.8, 3.0)] * 4)).writeto(tmp_path / "psf.fits")
    assert infer(cube, tmp_path / "c.parquet", "--psf", tmp_path / "psf.fits") == 1
    err = capsys.readouterr().err
    assert "4 PSF images for 6 stamps" in err and err.count("\n") == 1


def bad(image, where="psf.fits[0]"):
    with pytest.raises(InputError) as raised:
        checked_psf(image, where, 64)
    return str(raised.value)


def test_an_even_psf_is_refused():
    assert "odd size" in bad(np.ones((24, 24)))


def test_a_psf_larger_than_a_stamp_is_refused():
    assert "larger than a stamp" in bad(np.pad(moffat(0.8, 3.0), 20))  # 65 x 65 for 64 x 64 stamps


def test_a_psf_with_non_finite_pixels_is_refused():
    image = moffat(0.8, 3.0)
    image[3, 4] = np.nan
    assert "non-finite pixels" in bad(image)


def test_a_psf_without_positive_flux_is_refused():
    assert "not a positive flux" in bad(-moffat(0.8, 3.0))


def test_an_off_centre_psf_is_refused():
    """A PSF more than a pixel from its central pixel would shift every galaxy."""
    assert "from its central pixel" in bad(moffat(0.8, 3.0, offset=(1.6, 0.5)))


def test_a_psf_file_names_its_hdu(tmp_path):
    """Errors name the file and HDU; a file with a PSF HDU is read from it."""
    fits.HDUList([fits.PrimaryHDU(np.ones((3, 3))), fits.ImageHDU(np.ones((4, 4)), name="PSF")]).writeto(
        tmp_path / "p.fits")
    with pytest.raises(InputError, match=r"p\.fits\[PSF\]: a PSF image is square with an odd size"):
        read_psf(tmp_path / "p.fits", 64, 0.2)


def test_the_classical_fit_convolves_with_the_psf_images(seeing_cube, psf_cube, tmp_path):
    """`galcae fit --psf`: each stamp fitted through its own PSF image, the truth within errors."""
    cube, truth = seeing_cube
    assert main(["fit", str(cube), "-o", str(tmp_path / "f.parquet"), "--config", "survey",
                 "--psf", str(psf_cube)]) == 0
    cat = QTable.read(tmp_path / "f.parquet")
    assert not cat["flag_fit_failed"].any()
    for name in ("flux", "half_light_radius"):
        pulls = np.abs(np.asarray(cat[name]) - truth[name]) / np.asarray(cat[f"{name}_err"])
        assert np.all(pulls < 4), (name, pulls)


# --- PSF HDUs in the input files themselves ------------------------------------------------------


def psf_planes(truth):
    return np.stack([moffat(f, b) for f, b in zip(truth["psf_fwhm"], truth["psf_beta"])])


def test_a_cube_with_a_psf_hdu_is_measured_with_it(seeing_cube, tmp_path):
    """A cube file with a PSF HDU (a plane per stamp) needs no option: each stamp gets its seeing."""
    cube, truth = seeing_cube
    with fits.open(cube) as hdul:
        fits.HDUList([fits.PrimaryHDU(hdul[0].data), fits.ImageHDU(psf_planes(truth), name="PSF")]).writeto(
            tmp_path / "with_psf.fits")
    assert infer(tmp_path / "with_psf.fits", tmp_path / "c.parquet") == 0
    cat = QTable.read(tmp_path / "c.parquet")
    np.testing.assert_allclose(cat["psf_fwhm"].value, truth["psf_fwhm"], rtol=2e-3)
    assert not cat["flag_conditions_out_of_range"].any()


def test_the_psf_hdu_is_never_measured_as_the_image(seeing_cube, tmp_path):
    """A PSF HDU before the stamps is the PSF, not the image: the stamps are still found."""
    cube, truth = seeing_cube
    with fits.open(cube) as hdul:
        fits.HDUList([fits.PrimaryHDU(psf_planes(truth)), fits.ImageHDU(hdul[0].data, name="SCI")]).writeto(
            tmp_path / "psf_first.fits")
    with fits.open(tmp_path / "psf_first.fits", mode="update") as hdul:
        hdul[0].name = "PSF"
    assert infer(tmp_path / "psf_first.fits", tmp_path / "c.parquet") == 0
    assert len(QTable.read(tmp_path / "c.parquet")) == 6


def test_stamp_files_with_psf_hdus(seeing_cube, tmp_path):
    """A directory of stamp files, each with its PSF HDU: each stamp measured with its own."""
    cube, truth = seeing_cube
    (tmp_path / "stamps").mkdir()
    with fits.open(cube) as hdul:
        for i, (image, psf) in enumerate(zip(hdul[0].data, psf_planes(truth))):
            fits.HDUList([fits.PrimaryHDU(image), fits.ImageHDU(psf, name="PSF")]).writeto(
                tmp_path / "stamps" / f"s{i}.fits")
    assert infer(tmp_path / "stamps", tmp_path / "c.parquet") == 0
    np.testing.assert_allclose(QTable.read(tmp_path / "c.parquet")["psf_fwhm"].value, truth["psf_fwhm"], rtol=2e-3)


def test_the_psf_option_overrides_the_files_psf_hdu(seeing_cube, tmp_path):
    """--psf FILE wins over a file's own PSF HDU."""
    cube, truth = seeing_cube
    with fits.open(cube) as hdul:
        fits.HDUList([fits.PrimaryHDU(hdul[0].data), fits.ImageHDU(psf_planes(truth), name="PSF")]).writeto(
            tmp_path / "with_psf.fits")
    fits.PrimaryHDU(moffat(0.9, 3.5)).writeto(tmp_path / "psf.fits")
    assert infer(tmp_path / "with_psf.fits", tmp_path / "c.parquet", "--psf", tmp_path / "psf.fits") == 0
    np.testing.assert_allclose(QTable.read(tmp_path / "c.parquet")["psf_fwhm"].value, 0.9, rtol=2e-3)


def test_a_psf_hdu_whose_count_is_not_the_cubes_is_one_line(seeing_cube, tmp_path, capsys):
    cube, truth = seeing_cube
    with fits.open(cube) as hdul:
        fits.HDUList([fits.PrimaryHDU(hdul[0].data), fits.ImageHDU(psf_planes(truth)[:4], name="PSF")]).writeto(
            tmp_path / "short.fits")
    assert infer(tmp_path / "short.fits", tmp_path / "c.parquet") == 1
    err = capsys.readouterr().err
    assert "short.fits[PSF]: 4 PSF images for the file's 6 stamps" in err and err.count("\n") == 1


def test_stamp_files_with_and_without_psf_hdus_are_refused(seeing_cube, tmp_path, capsys):
    """Some stamp files with a PSF HDU and some without: one line naming the first without."""
    cube, truth = seeing_cube
    (tmp_path / "stamps").mkdir()
    with fits.open(cube) as hdul:
        fits.HDUList([fits.PrimaryHDU(hdul[0].data[0]), fits.ImageHDU(moffat(0.8, 3.0), name="PSF")]).writeto(
            tmp_path / "stamps" / "a.fits")
        fits.PrimaryHDU(hdul[0].data[1]).writeto(tmp_path / "stamps" / "b.fits")
    assert infer(tmp_path / "stamps", tmp_path / "c.parquet") == 1
    assert "b.fits: no PSF HDU, where other stamp files have one" in capsys.readouterr().err


@pytest.fixture(scope="module")
def aberrated_cube(tmp_path_factory, aberrated_psf):
    """Eight bright galaxies drawn by GalSim through one aberrated, elliptical (non-Moffat)
    PSF, the cube's PSF HDU holding its image; and their truth."""
    from galcae.config import load_stage
    from galcae.params import FIT_PARAMETERS
    from galcae.physics import pixel_variance, psf_from_image, render_noiseless
    from galcae.simulate import draw_parameters

    cfg = load_stage("simulate", "survey", ["n_galaxies=8", "seed=4", "ranges.flux=[30000, 200000]",
                                            "ranges.half_light_radius=[0.3, 1.0]", "noise.sky_level=400"])
    truth = draw_parameters(cfg)
    psf = aberrated_psf
    rng = np.random.default_rng(1)
    stamps = []
    for i in range(8):
        clean = render_noiseless(cfg, {k: v[i] for k, v in truth.items()}, psf_from_image(psf, 0.2)).array
        stamps.append(clean + rng.normal(size=clean.shape) * np.sqrt(pixel_variance(clean, 400.0, 1.0, 5.0)))
    path = tmp_path_factory.mktemp("aberrated") / "cube.fits"
    fits.HDUList([fits.PrimaryHDU(np.stack(stamps).astype(np.float32)),
                  fits.ImageHDU(psf, name="PSF")]).writeto(path)
    return path, {k: truth[k] for k in FIT_PARAMETERS}, psf


def test_refinement_fits_through_the_psf_image(aberrated_cube, tmp_path):
    """The default (refining) command fits bright stamps through their PSF image: chi²/dof
    near 1 and the truth within the errors; given only the image's (round) Moffat fit in a
    conditions table, the PSF's own ellipticity leaks into the galaxies' g1 by several sigma."""
    from galcae.catalog.psf import psf_conditions

    cube, truth, psf = aberrated_cube
    assert main(["infer", "--model", "survey", str(cube), "-o", str(tmp_path / "image.parquet")]) == 0
    with_image = Table.read(tmp_path / "image.parquet")
    assert with_image["refined"].all()
    assert np.all(np.abs(with_image["chi2_dof"] - 1) < 0.1)
    for name in ("flux", "half_light_radius", "g1", "g2"):
        pulls = (with_image[name] - truth[name]) / with_image[f"{name}_err"]
        assert np.all(np.abs(pulls) < 4), (name, pulls)

    fwhm, beta = psf_conditions(psf, 0.2)
    Table({"psf_fwhm": np.full(8, fwhm), "psf_beta": np.full(8, beta)}).write(tmp_path / "moffat.csv")
    bare = tmp_path / "bare.fits"
    fits.PrimaryHDU(fits.getdata(cube)).writeto(bare)
    assert main(["infer", "--model", "survey", str(bare), "-o", str(tmp_path / "moffat.parquet"),
                 "--conditions", str(tmp_path / "moffat.csv")]) == 0
    moffat_fit = Table.read(tmp_path / "moffat.parquet")
    assert np.median(np.abs(moffat_fit["g1"] - truth["g1"]) / moffat_fit["g1_err"]) > 3


def test_a_psfs_conditions_do_not_depend_on_its_image_size():
    """A Kolmogorov PSF cut at 25 or 63 pixels gets the same Moffat FWHM and beta."""
    def cut(size):
        image = galsim.Kolmogorov(fwhm=0.7).drawImage(nx=size, ny=size, scale=0.2).array
        return psf_conditions(checked_psf(image, "psf", 64), 0.2)

    assert np.allclose(cut(25), cut(63), rtol=1e-3)


def test_the_survey_models_model_error_floor_and_its_switch(aberrated_cube, tmp_path):
    """By default the refined rows' errors carry the survey card's model-error floor (r½: at
    least its 1.84%), and the catalog says so; --no-model-error leaves the fit's errors."""
    import json

    import pyarrow.parquet as pq

    from galcae.card import model_paths, read_card

    floors = read_card(model_paths("survey")[1]).refinement.model_error
    assert floors["half_light_radius"] > 0
    cube, _, _ = aberrated_cube
    assert main(["infer", "--model", "survey", str(cube), "-o", str(tmp_path / "floor.parquet")]) == 0
    assert main(["infer", "--model", "survey", str(cube), "-o", str(tmp_path / "bare.parquet"),
                 "--no-model-error"]) == 0
    floor, bare = Table.read(tmp_path / "floor.parquet"), Table.read(tmp_path / "bare.parquet")
    r = floor["half_light_radius"]
    assert np.all(floor["half_light_radius_err"] >= floors["half_light_radius"] * r * (1 - 1e-9))
    assert np.all(bare["half_light_radius_err"] < floor["half_light_radius_err"])
    assert np.allclose(floor["half_light_radius_err"] ** 2,
                       bare["half_light_radius_err"] ** 2 + (floors["half_light_radius"] * r) ** 2)
    meta = {p: json.loads(pq.read_schema(tmp_path / p).metadata[b"galcae"]) for p in ("floor.parquet", "bare.parquet")}
    assert meta["floor.parquet"]["refine_model_error"] == floors and meta["bare.parquet"]["refine_model_error"] == {}


@pytest.mark.parametrize("header, says", [({"PIXSCALE": 0.1}, "oversampled 2 times"),
                                          ({"PSF_SAMP": 0.5}, "oversampled 2 times"),
                                          ({"SECPIX": 0.27}, "0.27 arcsec (SECPIX)"),
                                          ({"PIXSCALE": "fine"}, "is not a pixel scale")])
def test_a_psf_of_another_pixel_scale_is_one_line(seeing_cube, tmp_path, capsys, header, says):
    """A PSF image whose header states another pixel scale (or an oversampling) than the
    stamps' is refused naming the file, HDU and keyword, as --psf and as a PSF HDU."""
    cube, _ = seeing_cube
    hdu = fits.ImageHDU(moffat(0.8, 3.0), name="PSF")
    hdu.header.update(header)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "psf.fits")
    assert infer(cube, tmp_path / "c.parquet", "--psf", tmp_path / "psf.fits") == 1
    err = capsys.readouterr().err
    assert "psf.fits[PSF]: " in err and says in err and "Traceback" not in err
    fits.HDUList([fits.PrimaryHDU(fits.getdata(cube)), hdu]).writeto(tmp_path / "own.fits")
    assert infer(tmp_path / "own.fits", tmp_path / "d.parquet") == 1
    assert says in capsys.readouterr().err


def test_a_psf_at_the_stamps_scale_is_taken(seeing_cube, tmp_path):
    cube, _ = seeing_cube
    hdu = fits.PrimaryHDU(moffat(0.8, 3.0))
    hdu.header["PIXSCALE"] = 0.2
    hdu.writeto(tmp_path / "psf.fits")
    assert infer(cube, tmp_path / "c.parquet", "--psf", tmp_path / "psf.fits") == 0
