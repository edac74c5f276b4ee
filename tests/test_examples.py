"""The examples shipped beside the package."""

import importlib.util
from pathlib import Path

import pytest


def test_slurm_example_builds_single_threaded_jobs():
    """The README's Slurm recipe builds a job script (no Slurm needed to render it)."""
    pytest.importorskip("dask_jobqueue")
    path = Path(__file__).parents[1] / "examples" / "slurm_infer.py"
    spec = importlib.util.spec_from_file_location("slurm_infer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cluster = example.slurm_cluster(4, queue="short", account="survey")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p short" in script and "OMP_NUM_THREADS=1" in script and "--nworkers 4" in script
