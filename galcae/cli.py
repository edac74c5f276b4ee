"""The ``galcae`` command line: subcommands only parse arguments and call the library.

``main(argv)`` is testable directly and returns the exit code: 0 on success, 1 for bad
input or a failed stage (one line on stderr), 2 for a malformed command line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__

log = logging.getLogger("galcae")

OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
OUTPUT_HELP = "Refuse to replace an existing output unless --overwrite is given."


def _setup_logging(verbosity: int) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("galcae").setLevel(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(__version__, prog_name="galcae")
def cli(verbose: int) -> None:
    """Measure galaxy photometric parameters with a conditional autoencoder (arXiv:2507.15898).

    Stages: simulate -> train -> evaluate; `galcae demo` runs them all on the paper's protocol;
    `galcae infer` measures galaxies in FITS files with a trained model; `galcae fit` fits
    them the classical way, for comparison.
    """
    _setup_logging(verbose)


@cli.command()
@click.argument("config")
@OVERRIDES
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Dataset directory to create.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes of a local Dask cluster (1: in-process).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler to use instead.")
@click.option("--overwrite", is_flag=True, help=OUTPUT_HELP)
def simulate(config, overrides, out, workers, scheduler, overwrite):
    """Render galaxies with GalSim into a dataset (images.zarr + params.parquet).

    CONFIG is a YAML file or a shipped preset name (paper); KEY=VALUE pairs override the
    `simulate` section, e.g. `n_galaxies=200 psf.profile=moffat sweep.parameter=flux`.
    """
    from .config import load_stage
    from .simulate import simulate_dataset

    cfg = load_stage("simulate", config, overrides)
    dataset = simulate_dataset(cfg, out, workers=workers, scheduler=scheduler, overwrite=overwrite,
                               protect=[config] if Path(config).exists() else [])
    failed = len(dataset) - len(dataset.usable)
    click.echo(f"Wrote {len(dataset)} galaxies to {out}"
               + (f" ({failed} could not be rendered; see the status column)" if failed else ""))


@cli.command()
@click.argument("dataset", type=click.Path())
@OVERRIDES
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--config", default=None, help="YAML file or preset whose `train` section is the base "
                                              "[default: paper].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUTPUT.")
@click.option("--init", "init", default=None,
              help="Fine-tune: start from this run's (or shipped model's) weights and preprocessing.")
@click.option("--overwrite", is_flag=True, help=OUTPUT_HELP)
def train(dataset, overrides, out, config, resume, init, overwrite):
    """Train the CAE on DATASET; KEY=VALUE pairs override the `train` section (e.g. epochs=20)."""
    from .config import load_stage
    from .train import train_model

    cfg = load_stage("train", config, overrides)
    model = train_model(dataset, out, cfg, resume=resume, overwrite=overwrite, init=init)
    click.echo(f"Trained {model.meta['epoch']} epochs; model in {out}")


@cli.command()
@click.argument("run", type=click.Path())
@click.argument("dataset", type=click.Path())
@click.option("--sweep", "sweeps", multiple=True, type=click.Path(),
              help="A controlled set (sweep.parameter) for Fig. 3; repeatable.")
@click.option("--classical", type=click.IntRange(0), default=None,
              help="Test galaxies to also fit classically and compare with the Cramér–Rao bound "
                   "[default: all; 0 skips].")
@click.option("--bound", type=click.IntRange(0), default=0, show_default=True,
              help="With --classical 0: test galaxies whose Cramér–Rao bound gives the CAE's "
                   "efficiency, per parameter and S/N bin.")
@click.option("--no-remeasure", is_flag=True,
              help="Skip the classical fits of the latent traversals (disentanglement).")
@click.option("--refine-snr", type=click.FloatRange(0), default=None, metavar="S/N",
              help="Also score the CAE refined by the classical fit above this stamp S/N "
                   "(as `galcae infer --refine-snr`), on the galaxies compared or bounded "
                   "[default: as `galcae infer`, the model card's policy].")
@click.option("--no-refine", is_flag=True, help="Score the CAE alone, even for a model that refines by default.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Processes for the classical fits and bounds.")
def evaluate(run, dataset, sweeps, classical, bound, no_remeasure, refine_snr, no_refine, workers):
    """Evaluate RUN on the held-out galaxies of DATASET; write RUN/eval/ (metrics, figures, report)."""
    from .demo import calibration_text, claims_text, comparison_table, disentanglement_text, r2_table
    from .evaluate import evaluate_run

    metrics = evaluate_run(run, dataset, sweeps, classical=classical, workers=workers, bound=bound,
                           remeasure=not no_remeasure, refine_snr=_refine_choice(refine_snr, no_refine))
    for text in (r2_table(metrics), comparison_table(metrics), calibration_text(metrics),
                 disentanglement_text(metrics), claims_text(metrics)):
        if text:
            click.echo(text)
    click.echo(f"Report: {run}/eval/report.html")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="[MODEL] INPUT...")
@click.option("-m", "--model", "model_name", default=None,
              help="A shipped model by name (survey; survey-v1, the previous one) or a run directory / "
                   "model file; without it, the first argument is the model.")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Catalog to write: .parquet or .fits.")
@click.option("--psf-fwhm", type=click.FloatRange(0, min_open=True), default=None,
              help="PSF FWHM in arcsec of every stamp, for models conditioned on the seeing "
                   "[default: each file's PSFFWHM keyword, or a dataset's truth].")
@click.option("--psf-beta", type=click.FloatRange(0, min_open=True), default=None,
              help="Moffat beta of the PSF, likewise [default: the PSFBETA keyword].")
@click.option("--psf", "psf", default=None, type=click.Path(), metavar="FILE",
              help="PSF images at the stamps' pixel scale: a 2-D image for every stamp or an "
                   "N x p x p cube, one per stamp in input order; a model conditioned on the "
                   "seeing takes the Moffat FWHM and beta fitted to each.")
@click.option("--conditions", "conditions", default=None, type=click.Path(), metavar="TABLE",
              help="A table (.fits, .parquet or .csv) of every stamp's psf_fwhm, psf_beta and "
                   "optionally noise_sigma, sky_level: one row per stamp in input order, or "
                   "matched by an id or source + index column [default: each file's keywords].")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(1),
              help="MC-dropout passes for the _err columns (needs a model trained with dropout); "
                   "1 uses the model's variance head, or its held-out residual scatter.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes of a local Dask cluster (1: in-process).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler to use instead.")
@click.option("--chunk-size", default=None, type=click.IntRange(1),
              help="Stamps per chunk: the unit of work, of memory and of resumption [default: "
                   "4096; 1024 when refining (the survey model's default), so that workers "
                   "share the fits].")
@click.option("--hdu", default=None, help="HDU (name or number) holding the images [default: the "
                                           "first 2-D or 3-D image].")
@click.option("--adapt-size", is_flag=True, help="Centre-crop / zero-pad stamps of another size "
                                                 "(flagged) instead of refusing them.")
@click.option("--reconstruct", type=click.Path(), default=None,
              help="Also write the decoded stamps to this .fits cube or .zarr array.")
@click.option("--detect-threshold", default=3.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Detection threshold for FITS fields (sep), in sigma of the image smoothed by a 3-pixel Gaussian.")
@click.option("--refine-snr", type=click.FloatRange(0), default=None, metavar="S/N",
              help="Re-measure stamps whose S/N (measured on the stamp) is at least this with "
                   "the classical fit (batched, in PyTorch), started at the CAE's values: at the "
                   "Cramér-Rao bound where the CAE is not, for about 20-25 ms per refined stamp on a core "
                   "[default: the S/N the model's refined errors were calibrated above, 25 for "
                   "`--model survey`; no refinement for a model without that calibration].")
@click.option("--no-refine", is_flag=True,
              help="The CAE alone, no classical fit (2-4 times faster with `--model survey` where half "
                   "the stamps are bright enough to refine; "
                   "its scatter above S/N 100 is about twice the Cramér-Rao bound).")
@click.option("--no-model-error", is_flag=True,
              help="Do not add the model card's model-error floor to the refined rows' errors: for "
                   "galaxies known to be single Sérsic profiles seen through the given PSF (simulations).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--overwrite", is_flag=True, help=OUTPUT_HELP)
def infer(inputs, model_name, out, psf_fwhm, psf_beta, psf, conditions, samples, workers, scheduler,
          chunk_size, hdu, adapt_size, reconstruct, detect_threshold, refine_snr, no_refine, no_model_error,
          device, overwrite):
    """Measure every galaxy of INPUT... with a model into a catalog.

    MODEL: `--model survey` (shipped with galcae: seven parameters, any seeing from 0.5 to
    1.2 arcsec; trained on realistic galaxies; `survey-v1`: the previous one) or a run
    directory / model file of your own. INPUT: FITS cubes (N x H x W),
    FITS stamps or directories / globs of them, datasets from `galcae simulate`, or FITS
    fields (sources are detected and cut out). Re-running an interrupted command resumes it.
    """
    from .catalog.infer import InferOptions, infer_catalog

    if model_name is None:
        if len(inputs) < 2:
            raise click.UsageError("give --model NAME (e.g. survey), or MODEL then INPUT...")
        model_name, inputs = inputs[0], inputs[1:]
    options = InferOptions(samples=samples, adapt_size=adapt_size, device=device, psf_fwhm=psf_fwhm,
                           psf_beta=psf_beta, refine_snr=_refine_choice(refine_snr, no_refine),
                           model_error=not no_model_error)
    summary = infer_catalog(model_name, inputs, out, workers=workers, scheduler=scheduler,
                            chunk_size=chunk_size, options=options, hdu=hdu,
                            reconstruct_to=reconstruct, detect_threshold=detect_threshold,
                            overwrite=overwrite, conditions=conditions, psf=psf, echo=click.echo)
    flagged = ", ".join(f"{k[5:]} {v}" for k, v in summary["flags"].items() if v)
    refined = summary["true_counts"].get("refined")
    click.echo(f"Wrote {summary['rows']} galaxies to {out} (errors: {summary['uncertainty']}"
               + (f"; refined: {refined}" if refined is not None else "")
               + (f"; flagged: {flagged}" if flagged else "") + ")")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Catalog to write: .parquet or .fits.")
@click.option("--config", default="paper", show_default=True,
              help="YAML file or preset whose `simulate` section describes the images "
                   "(stamp size, pixel scale, PSF, noise).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of that section, e.g. --set psf.fwhm=0.9; repeatable.")
@click.option("--conditions", "conditions", default=None, type=click.Path(), metavar="TABLE",
              help="A table of every stamp's psf_fwhm, psf_beta, sky_level or noise_sigma, as "
                   "`galcae infer --conditions` takes it.")
@click.option("--psf", "psf", default=None, type=click.Path(), metavar="FILE",
              help="PSF images (pixel included), as `galcae infer --psf` takes them: the fit "
                   "convolves the Sérsic model with the image itself.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Worker processes of a local Dask cluster (1: in-process).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler to use instead.")
@click.option("--chunk-size", default=64, show_default=True, type=click.IntRange(1),
              help="Stamps per chunk: the unit of work and of resumption.")
@click.option("--max-nfev", default=100, show_default=True, type=click.IntRange(1),
              help="Model evaluations before a fit is given up (flagged).")
@click.option("--hdu", default=None, help="HDU (name or number) holding the images.")
@click.option("--adapt-size", is_flag=True, help="Centre-crop / zero-pad stamps of another size.")
@click.option("--detect-threshold", default=3.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Detection threshold for FITS fields (sep), in sigma of the image smoothed by a 3-pixel Gaussian.")
@click.option("--overwrite", is_flag=True, help=OUTPUT_HELP)
def fit(inputs, out, config, overrides, conditions, psf, workers, scheduler, chunk_size, max_nfev, hdu,
        adapt_size, detect_threshold, overwrite):
    """Classical maximum-likelihood Sérsic fit (GalSim + scipy) of every galaxy of INPUT...

    Reads the same inputs as `galcae infer` and writes the same kind of catalog, with all
    seven Sérsic parameters, their errors, the fit status and its wall time.
    """
    from .catalog.fit import fit_catalog
    from .config import load_stage

    cfg = load_stage("simulate", config, list(overrides))
    summary = fit_catalog(inputs, out, cfg, workers=workers, scheduler=scheduler, chunk_size=chunk_size,
                          adapt_size=adapt_size, max_nfev=max_nfev, hdu=hdu,
                          detect_threshold=detect_threshold, overwrite=overwrite, conditions=conditions,
                          psf=psf, echo=click.echo)
    failed = summary["flags"]["flag_fit_failed"]
    click.echo(f"Wrote {summary['rows']} fits to {out}" + (f" ({failed} did not converge)" if failed else ""))


@cli.command()
@click.option("-o", "--output", "out", default="demo_output", show_default=True, type=click.Path(),
              help="Directory for the datasets and the run.")
@click.option("--full", is_flag=True, help="Train for the paper's 100 epochs (slower).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Train for this many epochs.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1),
              help="Simulation worker processes.")
@click.option("--overwrite", is_flag=True, help=OUTPUT_HELP)
def demo(out, full, epochs, workers, overwrite):
    """Reproduce the paper: simulate 1,000 galaxies + controlled sets, train, evaluate."""
    from .demo import run_demo

    run_demo(out, full=full, epochs=epochs, workers=workers, overwrite=overwrite, echo=click.echo)


def _refine_choice(refine_snr: float | None, no_refine: bool):
    """``--refine-snr S`` / ``--no-refine`` / neither (the model card's policy) as the library takes it."""
    from .card import MODEL_DEFAULT

    if no_refine and refine_snr is not None:
        raise click.UsageError("give --refine-snr or --no-refine, not both")
    return None if no_refine else (MODEL_DEFAULT if refine_snr is None else refine_snr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Every failure is one line on stderr: the culprit's message for bad input (exit 1), the
    system's for a file that cannot be written (exit 1), and for anything unforeseen its
    type and message (exit 1; ``-vv`` logs the traceback)."""
    try:
        cli.main(args=argv, prog_name="galcae", standalone_mode=False)
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.exceptions.Abort:
        click.echo("galcae: aborted", err=True)
        return 1
    except click.UsageError as err:  # one line, as every other error, instead of click's three
        command = err.ctx.command_path if err.ctx is not None else "galcae"
        click.echo(f"{command}: error: {err.format_message()} (see '{command} --help')", err=True)
        return 2
    except click.ClickException as err:
        err.show()
        return 2
    except KeyboardInterrupt:
        click.echo("galcae: interrupted; re-run the same command to resume", err=True)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place every error becomes one line
        click.echo(f"galcae: error: {error_line(err)}", err=True)
        log.debug("traceback of the error above", exc_info=True)
        return 1
    return 0


def error_line(err: BaseException) -> str:
    """One line for any exception: galcae's own messages as they are, the system's with the
    path it names, and anything unforeseen with its type."""
    from .errors import ERRORS

    if isinstance(err, OSError) and err.strerror:  # disk full, read-only, a path under a file...
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror}"
    elif isinstance(err, MemoryError):
        text = "out of memory; use smaller inputs, chunks or batches"
    else:
        text = str(err).strip() or type(err).__name__
        if not isinstance(err, (*ERRORS, ValueError, RuntimeError, FileExistsError, FileNotFoundError)):
            text = f"{type(err).__name__}: {text} (unexpected; -vv shows where)"
    lines = text.splitlines()
    return lines[0] + (" ..." if len(lines) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
