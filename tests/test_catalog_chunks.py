"""Chunked, resumable catalogs: refusing existing outputs, resuming, running on Dask workers."""

import numpy as np
import pytest
from astropy.table import QTable

from galcae.catalog import infer as infer_module
from galcae.cli import main


def run(*argv) -> int:
    return main(["infer", *map(str, argv)])


def test_existing_catalog_is_refused_and_kept(dropout_run, cube, tmp_path, capsys):
    """A catalog that exists is refused without --overwrite, and left byte for byte."""
    out = tmp_path / "kept.parquet"
    assert run(dropout_run, cube, "-o", out) == 0
    before = out.read_bytes()
    assert run(dropout_run, cube, "-o", out) == 1 and "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_resume_after_interruption_gives_the_same_catalog(dropout_run, cube, tmp_path, monkeypatch):
    """A crash in one chunk keeps the finished parts; re-running skips them; the result is identical."""
    reference = tmp_path / "ref.parquet"
    assert run(dropout_run, cube, "-o", reference, "--chunk-size", 16) == 0

    real = infer_module.infer_chunk
    calls = []

    def crash_on_third(*args):
        calls.append(args[4])
        if len(calls) == 3:
            raise RuntimeError("node lost")
        return real(*args)

    monkeypatch.setattr(infer_module, "infer_chunk", crash_on_third)
    out = tmp_path / "cat.parquet"
    assert run(dropout_run, cube, "-o", out, "--chunk-size", 16) == 1
    parts = sorted(p.name for p in (tmp_path / "cat.parquet.parts").glob("part-*.parquet"))
    assert parts == ["part-000000.parquet", "part-000001.parquet"] and not out.exists()

    monkeypatch.setattr(infer_module, "infer_chunk", real)
    summary = infer_module.infer_catalog(dropout_run, [cube], out, chunk_size=16)
    assert summary["skipped"] == 2
    assert QTable.read(out).as_array().tolist() == QTable.read(reference).as_array().tolist()
    assert not (tmp_path / "cat.parquet.parts").exists()


@pytest.fixture(scope="module")
def in_process(dropout_run, cube, tmp_path_factory):
    """The cube's catalog made in this process, in chunks of 16."""
    out = tmp_path_factory.mktemp("chunks") / "a.parquet"
    assert run(dropout_run, cube, "-o", out, "--chunk-size", 16) == 0
    return QTable.read(out)


def _assert_same_catalog(ta, other):
    assert ta.colnames == other.colnames and list(ta["id"]) == list(other["id"])
    for name in ("flux", "half_light_radius", "flux_err"):
        np.testing.assert_allclose(ta[name].value, other[name].value, rtol=1e-5)


def test_local_dask_workers_give_the_in_process_catalog(in_process, dropout_run, cube, tmp_path):
    """Two local Dask worker processes (--workers 2) give the in-process catalog (floats to 1e-5)."""
    assert run(dropout_run, cube, "-o", tmp_path / "b.parquet", "--chunk-size", 16, "--workers", 2) == 0
    _assert_same_catalog(in_process, QTable.read(tmp_path / "b.parquet"))


def test_an_existing_dask_cluster_gives_the_in_process_catalog(in_process, dropout_run, cube, tmp_path):
    """A running cluster given by address (--scheduler) gives the in-process catalog (floats to 1e-5)."""
    from distributed import LocalCluster

    # No dashboard, and the scheduler's other HTTP routes on a free port (as galcae's own
    # clusters): a run elsewhere holding 8787 must not fail this test.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": ":0"}, host="127.0.0.1") as cluster:
        assert run(dropout_run, cube, "-o", tmp_path / "c.parquet", "--chunk-size", 16, "--scheduler",
                   cluster.scheduler_address) == 0
    _assert_same_catalog(in_process, QTable.read(tmp_path / "c.parquet"))
