"""Everything shipped to Dask workers survives pickling (with pickle, and with cloudpickle,
which Dask uses for what pickle cannot do).

What travels (``map_chunks`` / ``map_ordered`` in galcae/distributed.py, ``build_catalog``
in galcae/catalog/chunks.py):

- ``galcae infer``: ``partial(infer_chunk, model.json path, weights SHA-256, InferOptions)``,
  and per chunk ``(chunk, number, first id, parts directory, columns)``;
- ``galcae fit``: ``partial(fit_chunk, SimConfig, adapt_size, max_nfev)`` and the same per chunk;
- ``galcae simulate``: ``render_chunk`` with ``(SimConfig, the chunk's parameter rows)``;
- evaluation and refinement blocks (``map_ordered``): ``crb_table`` / ``_fit_and_bound`` with
  ``(SimConfig, [images,] truth)``; ``_timed_refine`` with ``(SimConfig, images, conditions,
  estimates, min_snr, VarianceCalibration or None, max_steps)``.

A chunk is read by the worker, so :class:`galcae.catalog.sources.Stamps` never travels, and
each worker loads the model itself; the model card's dataclasses are checked here too, since
they hold the calibrations and configs that do travel.
"""

import copy
import functools
import pickle

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from galcae import distributed
from galcae.catalog import chunks as chunks_module
from galcae.catalog.conditions_table import with_conditions
from galcae.catalog.fit import fit_catalog, fit_chunk
from galcae.catalog.infer import InferOptions, infer_catalog, infer_chunk
from galcae.catalog.psf import checked_psf, with_psf
from galcae.catalog.sources import CubeChunk, DatasetChunk, FieldChunk, StampFilesChunk, plan_inputs
from galcae.checkpoint import load_model
from galcae.config import SimConfig, TrainConfig, load_stage
from galcae.estimate.refine import _timed_refine
from galcae.evaluate.comparison import _fit_and_bound, crb_only, crb_table
from galcae.model import Architecture
from galcae.scaling import ParameterScaling, PixelNormalization
from galcae.simulate import draw_parameters, render_chunk, simulate_dataset
from galcae.train import train_config_of
from galcae.uncertainty import HeldoutScatter, VarianceCalibration

from conftest import TINY_SURVEY, tiny_sim, write_field

try:
    import cloudpickle
except ImportError:  # Dask depends on it; without it only pickle is checked
    cloudpickle = None


@pytest.fixture(params=["pickle", "cloudpickle"])
def dumper(request):
    """The module that serialises: pickle, or cloudpickle (skipped where it is not installed)."""
    if request.param == "cloudpickle":
        if cloudpickle is None:
            pytest.skip("cloudpickle is not installed")
        return cloudpickle
    return pickle


def round_trip(obj, dumper=pickle):
    return pickle.loads(dumper.dumps(obj))


# --- configs and options -------------------------------------------------------------------------

CONFIGS = {
    "SimConfig()": lambda: SimConfig(),
    "TrainConfig()": lambda: TrainConfig(),
    "simulate paper": lambda: load_stage("simulate", "paper"),
    "simulate survey": lambda: load_stage("simulate", "survey"),
    "train paper": lambda: load_stage("train", "paper"),
    "train survey": lambda: load_stage("train", "survey"),
    "moffat sweep": lambda: load_stage("simulate", "paper", ["psf.profile=moffat", "sweep.parameter=flux"]),
    "tiny survey": lambda: load_stage("simulate", "paper", TINY_SURVEY),
    "one galaxy's": lambda: load_stage("simulate", "survey").for_galaxy(
        {"psf_fwhm": 0.8, "psf_beta": 2.5, "sky_level": 70.0}),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_survive_pickling(name, dumper):
    """A config comes back equal, of its type, with its hash."""
    cfg = CONFIGS[name]()
    back = round_trip(cfg, dumper)
    assert type(back) is type(cfg) and back == cfg and hash(back) == hash(cfg)


def test_a_runs_train_config_survives_pickling(survey_run, dumper):
    """The train config read back from a run's model.json comes back equal."""
    cfg = train_config_of(survey_run)
    assert round_trip(cfg, dumper) == cfg


OPTIONS = {
    "default": InferOptions(),
    "every option": InferOptions(samples=4, adapt_size=True, batch_size=8, seed=3, reconstruct=True,
                                 device="cpu", psf_fwhm=0.8, psf_beta=3.0, refine_snr=20.0),
    "no refinement": InferOptions(refine_snr=None),
}


@pytest.mark.parametrize("name", OPTIONS)
def test_infer_options_survive_pickling(name, dumper):
    """InferOptions come back equal, with their hash."""
    options = OPTIONS[name]
    back = round_trip(options, dumper)
    assert type(back) is InferOptions and back == options and hash(back) == hash(options)


# --- calibrations, scalings and the model card ----------------------------------------------------


def _fitted_calibration():
    rng = np.random.default_rng(0)
    z_pred, sigma = rng.normal(size=(2000, 2)), np.exp(rng.uniform(-2, 0, size=(2000, 2)))
    z_true = z_pred + sigma * rng.normal(size=sigma.shape)
    return VarianceCalibration.fit(z_true, z_pred, sigma, np.exp(rng.uniform(0, 6, size=2000)), per_bin=200)


PARTS = {
    "VarianceCalibration (three stages)": _fitted_calibration,
    "VarianceCalibration (legacy scale)": lambda: VarianceCalibration.from_meta({"variance_scale": [2.0]}, 1),
    "HeldoutScatter": lambda: HeldoutScatter.fit(np.random.default_rng(1).normal(size=(200, 2)),
                                                 np.random.default_rng(2).normal(size=(200, 2))),
    "ParameterScaling": lambda: ParameterScaling.fit({"flux": np.array([500.0, 5000.0]), "x": np.array([1.0, 3.0])},
                                                     ("flux", "x"), ("flux",)),
    "PixelNormalization": lambda: PixelNormalization.fit(np.array([[0.0, 3000.0]]), noise_sigma=10.0),
    "Architecture": lambda: Architecture(stamp_size=32, n_supervised=7, n_conditions=3, predict_variance=True),
}


@pytest.mark.parametrize("name", PARTS)
def test_calibrations_and_scalings_survive_pickling(name, dumper):
    """Error calibrations, scalings and architectures come back equal."""
    part = PARTS[name]()
    back = round_trip(part, dumper)
    assert type(back) is type(part) and back == part


@pytest.fixture(scope="module")
def cards(tiny_run, survey_run):
    """The cards of the shipped survey model, of a paper-like run and of a conditioned run."""
    return {"shipped survey": load_model("survey", device="cpu").card,
            "tiny run": load_model(tiny_run, device="cpu").card,
            "survey run": load_model(survey_run, device="cpu").card}


@pytest.mark.parametrize("which", ["shipped survey", "tiny run", "survey run"])
def test_model_card_survives_pickling(which, cards, dumper):
    """A ModelCard comes back equal, with the model.json it was read from."""
    card = cards[which]
    back = round_trip(card, dumper)
    assert back == card and back.raw == card.raw


CARD_PARTS = ("architecture", "normalization", "parameter_scaling", "condition_scaling", "training_set",
              "errors", "errors.variance", "errors.heldout", "refinement", "refinement.calibration")


def test_card_dataclasses_survive_pickling(cards, dumper):
    """Every dataclass the cards hold (the shipped model's calibrations included) comes back equal."""
    checked = set()
    for card in cards.values():
        for path in CARD_PARTS:
            part = functools.reduce(getattr, path.split("."), card)
            if part is not None:
                assert round_trip(part, dumper) == part, path
                checked.add(path)
    assert {"errors.variance", "errors.heldout", "condition_scaling"} <= checked  # not all vacuous


# --- chunks ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan(tiny_dataset, tmp_path_factory):
    """Inputs of every kind planned in chunks of at most 4 stamps: a cube and stamp files with
    PSF keywords, the tiny dataset and a field with a source at its edge."""
    tmp = tmp_path_factory.mktemp("pickling")
    images = tiny_dataset.load_images(np.arange(6))
    fits.PrimaryHDU(images, header=fits.Header({"PSFFWHM": 0.8, "PSFBETA": 3.0})).writeto(tmp / "cube.fits")
    (tmp / "stamps").mkdir()
    for i in range(3):
        header = fits.Header({"PSFFWHM": 0.9}) if i == 1 else None
        fits.PrimaryHDU(images[i], header=header).writeto(tmp / "stamps" / f"g{i}.fits")
    write_field(tmp / "field.fits", [(40.2, 50.7), (110.0, 100.3), (80.5, 3.0)])
    return plan_inputs([tmp / "cube.fits", tmp / "stamps", tiny_dataset.path, tmp / "field.fits"],
                       stamp_size=32, pixel_scale=0.2, chunk_size=4, work_dir=tmp / "parts")


def test_plan_holds_every_kind_of_chunk(plan):
    """The inputs above are planned into chunks of all four kinds (the checks below are not vacuous)."""
    assert {type(c) for c in plan.chunks} == {CubeChunk, StampFilesChunk, DatasetChunk, FieldChunk}


def test_chunks_survive_pickling(plan, dumper):
    """Cube, stamp-file and dataset chunks come back equal, with their hash."""
    for chunk in plan.chunks:
        if isinstance(chunk, FieldChunk):
            continue
        back = round_trip(chunk, dumper)
        assert type(back) is type(chunk) and back == chunk and hash(back) == hash(chunk), chunk


def test_field_chunks_survive_pickling(plan, dumper):
    """A field chunk comes back with its field file, source, detections and conditions."""
    fields = [c for c in plan.chunks if isinstance(c, FieldChunk)]
    for chunk in fields:
        back = round_trip(chunk, dumper)
        assert (back.array, back.source, back.conditions) == (chunk.array, chunk.source, chunk.conditions)
        assert back.detections.keys() == chunk.detections.keys()
        for key, values in chunk.detections.items():
            np.testing.assert_array_equal(back.detections[key], values, err_msg=key)
    assert fields


def test_a_field_chunk_equals_its_copy(plan):
    """``==`` of a field chunk and its unpickled copy (dataclass equality over array-valued dicts)."""
    chunk = next(c for c in plan.chunks if isinstance(c, FieldChunk))
    assert round_trip(chunk) == chunk


def test_chunks_given_a_conditions_table_survive_pickling(plan, dumper):
    """Every kind of chunk, wrapped with its rows of a conditions table, comes back equal and
    reads the same stamps with the table's conditions."""
    total = int(sum(plan.rows))
    wrapped = copy.deepcopy(plan)
    with_conditions(wrapped, {"psf_fwhm": np.linspace(0.6, 1.1, total), "psf_beta": np.full(total, 3.0)},
                    "table.csv")
    for number, chunk in enumerate(wrapped.chunks):
        back = round_trip(chunk, dumper)
        assert back == chunk and hash(back) == hash(chunk), chunk
        stamps = back.read(32, False)
        np.testing.assert_array_equal(stamps.conditions["psf_fwhm"], chunk.conditions["psf_fwhm"])
        _assert_same_stamps(stamps, chunk.read(32, False), f"chunk {number}")


def test_chunks_given_psf_images_survive_pickling(plan, dumper, tmp_path):
    """Every kind of chunk, given one PSF image per stamp (a cube in a file, each chunk
    reading its own planes), comes back equal and reads the same stamps, PSF images and
    measured seeing."""
    import galsim
    from astropy.io import fits

    total = int(sum(plan.rows))
    images = np.stack([galsim.Moffat(beta=3.0, fwhm=f).drawImage(nx=15, ny=15, scale=0.2).array
                       for f in np.linspace(0.6, 1.1, total)])
    fits.PrimaryHDU(images.astype(np.float32)).writeto(tmp_path / "psf.fits")
    wrapped = copy.deepcopy(plan)
    with_psf(wrapped, checked_psf(images, "psf.fits", 32), 0.2, tmp_path / "psf.fits", 0, 32)
    first = 0
    for number, chunk in enumerate(wrapped.chunks):
        back = round_trip(chunk, dumper)
        assert back == chunk and hash(back) == hash(chunk), chunk
        a, b = back.read(32, False), chunk.read(32, False)
        np.testing.assert_array_equal(a.psf, b.psf)
        n = len(a.images)
        np.testing.assert_allclose(a.psf, images[first:first + n] / images[first:first + n].sum(
            axis=(1, 2), keepdims=True), rtol=1e-6)
        first += n
        _assert_same_stamps(a, b, f"chunk {number}")


def _assert_same_stamps(a, b, where):
    np.testing.assert_array_equal(a.images, b.images, err_msg=where)
    assert a.columns.keys() == b.columns.keys(), where
    for key in a.columns:
        np.testing.assert_array_equal(a.columns[key], b.columns[key], err_msg=f"{where}: {key}")
    np.testing.assert_array_equal(a.truncated, b.truncated, err_msg=where)
    np.testing.assert_array_equal(a.adapted, b.adapted, err_msg=where)
    assert a.conditions.keys() == b.conditions.keys(), where
    for key in a.conditions:
        np.testing.assert_array_equal(a.conditions[key], b.conditions[key], err_msg=f"{where}: {key}")


def test_unpickled_chunks_read_the_same_stamps(plan, dumper):
    """Every chunk, unpickled, reads the stamps, columns, flags and conditions the original reads."""
    for number, chunk in enumerate(plan.chunks):
        _assert_same_stamps(round_trip(chunk, dumper).read(32, False), chunk.read(32, False),
                            f"chunk {number} ({type(chunk).__name__})")


# --- the tasks themselves -------------------------------------------------------------------------


@pytest.mark.parametrize("func", [render_chunk, infer_chunk, fit_chunk, crb_table, _fit_and_bound, _timed_refine],
                         ids=lambda f: f.__name__)
def test_worker_functions_pickle_by_reference(func, dumper):
    """What workers run is importable by name: it unpickles as the same function."""
    assert round_trip(func, dumper) is func


@pytest.fixture
def shipped(monkeypatch, dumper):
    """Route every ``map_chunks`` call (catalogs, simulations, ``map_ordered`` blocks) through a
    round trip of its task and each argument tuple; list what was sent."""
    sent = []

    def through(module):
        real = module.map_chunks

        def map_chunks(func, args, client=None, **kwargs):
            args = list(args)
            sent.append((func, args))
            return real(round_trip(func, dumper), [round_trip(a, dumper) for a in args], client, **kwargs)

        monkeypatch.setattr(module, "map_chunks", map_chunks)

    through(chunks_module)
    through(distributed)
    return sent


def _assert_partial_survives(task, func, dumper):
    back = round_trip(task, dumper)
    assert isinstance(task, functools.partial) and task.func is func and back.func is func
    assert back.args == task.args and back.keywords == task.keywords


@pytest.fixture(scope="module")
def infer_reference(tiny_run, cube, tmp_path_factory):
    """The tiny run's catalog of the cube, in chunks of 16, made without pickling."""
    out = tmp_path_factory.mktemp("pickling") / "ref.parquet"
    infer_catalog(tiny_run, [cube], out, chunk_size=16)
    return QTable.read(out).as_array().tolist()


def test_infer_task_and_its_chunks_survive_pickling(shipped, infer_reference, tiny_run, cube, tmp_path, dumper):
    """infer's task and chunk arguments come back equal, and their copies make the same catalog."""
    out = tmp_path / "cat.parquet"
    infer_catalog(tiny_run, [cube], out, chunk_size=16)
    [(task, args)] = shipped
    _assert_partial_survives(task, infer_chunk, dumper)
    assert any(isinstance(a, InferOptions) for a in task.args)
    assert len(args) == 4 and all(round_trip(a, dumper) == a for a in args)
    assert QTable.read(out).as_array().tolist() == infer_reference


@pytest.fixture(scope="module")
def fit_inputs(tiny_dataset, tmp_path_factory):
    """A cube of a real stamp and an empty one, the config describing it, and its catalog of
    classical fits made (a stamp per chunk) without pickling."""
    tmp = tmp_path_factory.mktemp("pickling")
    images = tiny_dataset.load_images(np.arange(2)).copy()
    images[1] = 0.0
    fits.writeto(tmp / "cube.fits", images)
    cfg = load_stage("simulate", "paper", ["stamp_size=32"])
    fit_catalog([tmp / "cube.fits"], tmp / "ref.parquet", cfg, chunk_size=1)
    return tmp / "cube.fits", cfg, QTable.read(tmp / "ref.parquet")


def test_fit_task_and_its_chunks_survive_pickling(shipped, fit_inputs, tmp_path, dumper):
    """fit's task and chunk arguments come back equal, and their copies make the same fits."""
    cube, cfg, reference = fit_inputs
    fit_catalog([cube], tmp_path / "cat.parquet", cfg, chunk_size=1)
    [(task, args)] = shipped
    _assert_partial_survives(task, fit_chunk, dumper)
    assert task.args[0] == cfg
    assert len(args) == 2 and all(round_trip(a, dumper) == a for a in args)
    cat = QTable.read(tmp_path / "cat.parquet")
    assert cat.colnames == reference.colnames and cat["status"][0] == "ok"
    for name in cat.colnames:
        if name != "seconds":
            np.testing.assert_array_equal(np.asarray(cat[name]), np.asarray(reference[name]), err_msg=name)


@pytest.fixture(scope="module")
def simulate_reference(tmp_path_factory):
    """Six tiny galaxies simulated in chunks of 3 without pickling."""
    return simulate_dataset(tiny_sim("n_galaxies=6", "chunk_size=3"), tmp_path_factory.mktemp("pickling") / "ref")


def _assert_same_rows(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_simulation_chunks_survive_pickling(shipped, simulate_reference, tmp_path, dumper):
    """simulate's (SimConfig, rows) come back equal, and their copies render the same bytes."""
    cfg = tiny_sim("n_galaxies=6", "chunk_size=3")
    dataset = simulate_dataset(cfg, tmp_path / "data")
    [(func, args)] = shipped
    assert func is render_chunk and len(args) == 2
    for chunk_cfg, rows in args:
        back_cfg, back_rows = round_trip((chunk_cfg, rows), dumper)
        assert back_cfg == chunk_cfg == cfg
        _assert_same_rows(back_rows, rows)
    assert dataset.load_images().tobytes() == simulate_reference.load_images().tobytes()
    _assert_same_rows(dataset.params, simulate_reference.params)


@pytest.fixture(scope="module")
def crb_reference():
    """Cramér–Rao bounds of three galaxies drawn with varying conditions, in blocks of 2, without pickling."""
    cfg = load_stage("simulate", "paper", TINY_SURVEY + ["n_galaxies=3"])
    truth = draw_parameters(cfg)
    return cfg, truth, crb_only(cfg, truth, block=2)


def test_evaluation_blocks_survive_pickling(shipped, crb_reference, dumper):
    """map_ordered's (SimConfig, truth) blocks come back equal, and their copies give the same bounds."""
    cfg, truth, reference = crb_reference
    bounds = crb_only(cfg, truth, block=2)
    [(func, args)] = shipped
    assert func is crb_table and len(args) == 2
    for block_cfg, block_truth in args:
        back_cfg, back_truth = round_trip((block_cfg, block_truth), dumper)
        assert back_cfg == block_cfg == cfg
        _assert_same_rows(back_truth, block_truth)
    _assert_same_rows(bounds, reference)
