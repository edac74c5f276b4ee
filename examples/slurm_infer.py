"""Measure a survey's cutouts on a Slurm cluster with galcae and dask-jobqueue.

    pip install galcae dask-jobqueue
    python examples/slurm_infer.py MODEL 'cutouts/*.fits' -o catalog.parquet --jobs 20

Starts a ``SLURMCluster`` (one single-threaded worker process per core, so PyTorch does not
oversubscribe), scales it to ``--jobs`` batch jobs and hands its scheduler address to
``galcae.catalog.infer.infer_catalog`` -- the same call as ``galcae infer --scheduler ADDRESS``.
The catalog's parts are written next to the output, so the output directory must be on a
file system the compute nodes share; re-running after a pre-emption resumes. Edit the
queue, account and walltime for your site.
"""

import argparse

from dask_jobqueue import SLURMCluster

from galcae.card import resolve_model
from galcae.catalog.infer import infer_catalog


def slurm_cluster(cores: int, queue=None, account=None) -> SLURMCluster:
    """Jobs of ``cores`` single-threaded worker processes, 2 GB each (a 64x64 chunk of 4,096
    stamps needs about 0.3 GB)."""
    return SLURMCluster(
        queue=queue, account=account, cores=cores, processes=cores, memory=f"{2 * cores}GB",
        walltime="02:00:00",
        job_script_prologue=["export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a shipped model (survey) or a run directory")
    parser.add_argument("inputs", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs (nodes) to start")
    parser.add_argument("--cores", type=int, default=16, help="cores per job")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    args = parser.parse_args()

    cluster = slurm_cluster(args.cores, args.queue, args.account)
    cluster.scale(jobs=args.jobs)
    try:
        summary = infer_catalog(resolve_model(args.model), args.inputs, args.output,
                                scheduler=cluster.scheduler_address, echo=print)
        print(f"Wrote {summary['rows']} galaxies to {summary['catalog']}")
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
