"""``galcae demo``: the paper's protocol end to end (simulate -> train -> evaluate)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import load_stage
from .evaluate import evaluate_run
from .evaluate.report import refinement_summary
from .simulate import simulate_dataset
from .train import train_model

log = logging.getLogger(__name__)

#: Epochs of the demo: what fits the 15-minute budget on a 2-core CPU (the paper: 100).
DEMO_EPOCHS = 60
#: Galaxies per controlled set (Fig. 3).
SWEEP_GALAXIES = 200
#: Test galaxies the demo also fits classically and bounds (~3 s each on one core: the
#: paper's galaxies are large; `--full` does all of them).
CLASSICAL_GALAXIES = 32
SWEPT = ("flux", "half_light_radius")


def run_demo(out="demo_output", *, full: bool = False, workers: int = 2, overwrite: bool = False,
             epochs: int | None = None, echo=print) -> dict:
    """Simulate the paper's 1,000 galaxies and the controlled sets, train, evaluate.

    Parameters
    ----------
    out : path
        Directory for ``dataset/``, ``sweep_<parameter>/`` and ``run/``. [default: demo_output]
    full : bool
        Train for the paper's 100 epochs instead of :data:`DEMO_EPOCHS`.
    epochs : int, optional
        Override the number of epochs (tests and quick looks).
    """
    out = Path(out)
    n_epochs = epochs or (None if full else DEMO_EPOCHS)
    train_cfg = load_stage("train", "paper", [f"epochs={n_epochs}"] if n_epochs else [])
    if train_cfg.epochs < 100:
        echo(f"Training for {train_cfg.epochs} epochs (the paper: 100) to fit the demo's time "
             "budget; `galcae demo --full` runs the paper's schedule.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another directory or pass --overwrite")
    start = time.perf_counter()
    echo("Simulating 1,000 galaxies (paper, Table 1) and the controlled sets ...")
    sweeps = simulate_paper_sets(out, workers, overwrite)
    echo(f"Training the CAE ({train_cfg.epochs} epochs) ...")
    train_model(out / "dataset", out / "run", train_cfg, overwrite=overwrite)
    echo("Evaluating on the held-out galaxies ...")
    metrics = evaluate_run(out / "run", out / "dataset", sweeps, workers=workers,
                           classical=None if full else CLASSICAL_GALAXIES)
    echo(r2_table(metrics))
    echo(comparison_table(metrics))
    echo(disentanglement_text(metrics))
    echo(claims_text(metrics))
    echo(f"Done in {time.perf_counter() - start:.0f} s. Report: {out / 'run' / 'eval' / 'report.html'}")
    return metrics


def simulate_paper_sets(out: Path, workers: int = 2, overwrite: bool = False) -> list[Path]:
    """The paper's 1,000 galaxies in ``out/dataset`` and its controlled sets (Fig. 3) in
    ``out/sweep_<parameter>``; returns the controlled sets' paths."""
    simulate_dataset(load_stage("simulate", "paper"), out / "dataset", workers=workers, overwrite=overwrite)
    sweeps = []
    for parameter in SWEPT:
        sweeps.append(out / f"sweep_{parameter}")
        sweep_cfg = load_stage("simulate", "paper", [f"n_galaxies={SWEEP_GALAXIES}",
                                                     f"sweep.parameter={parameter}"])
        simulate_dataset(sweep_cfg, sweeps[-1], workers=workers, overwrite=overwrite)
    return sweeps


def r2_table(metrics: dict) -> str:
    """The R² table of an evaluation as aligned text."""
    r2 = metrics["r2"]
    names = list(r2["cae"])
    lines = [f"R² on {metrics['n_test']} held-out galaxies "
             f"(CAE trained {metrics['epochs_trained']} epochs)",
             f"{'method':<28}" + "".join(f"{n:>20}" for n in names)]
    for method, label in (("cae", "CAE (one latent each)"), ("pca_best_single", "PCA best single"),
                          ("pca_all", f"PCA all {metrics['pca']['n_components']} + linear")):
        lines.append(f"{label:<28}" + "".join(f"{r2[method][n]:>20.3f}" for n in names))
    return "\n".join(lines)


def comparison_table(metrics: dict) -> str:
    """Scatter and efficiency vs the Cramér–Rao bound per method, and the speedup, as text.

    With the CAE alone against the bound (``evaluate --bound``), every S/N bin is listed."""
    if "comparison" not in metrics:
        return ""
    names = list(metrics["r2"]["cae"])
    classical = metrics.get("classical")
    n = classical["n"] if classical else metrics["comparison"]["cae"][names[0]]["all"]["n"]
    subsets = ("all", "snr > 20") if classical else None
    lines = [f"Against the Cramér–Rao bound ({n} test galaxies; scatter = mad_std of the "
             "relative (flux, radius, n) or absolute error, efficiency = CRB / scatter)",
             f"{'method':<12}{'parameter':<20}{'subset':<14}{'N':>6}{'bias':>9}{'scatter':>9}"
             f"{'efficiency':>12}"]
    for method, per_param in metrics["comparison"].items():
        for name in names:
            for subset, s in per_param.get(name, {}).items():
                if (subsets and subset not in subsets) or s.get("n", 0) < 3:
                    continue
                eff = "" if s["efficiency"] is None else f"{s['efficiency']:.2f}"
                lines.append(f"{method:<12}{name:<20}{subset:<14}{s['n']:>6}{s['bias']:>9.3f}"
                             f"{s['scatter']:>9.3f}{eff:>12}")
    if classical:
        t = metrics["timing"]
        lines.append(f"Time per galaxy: CAE {t['cae']:.2g} s, classical fit {t['classical']:.2g} s "
                     f"({classical['failed']} of {classical['n']} fits failed): "
                     f"speedup {metrics['speedup_vs_classical']:.0f}x")
    if "refinement" in metrics:
        lines.append(refinement_summary(metrics))
    return "\n".join(lines)


def calibration_text(metrics: dict) -> str:
    """Coverage of the 68% / 95% intervals per parameter and S/N bin, as text."""
    if "calibration" not in metrics:
        return ""
    cal = metrics["calibration"]
    lines = [f"Coverage of the reported intervals ({cal['space']}; target 68 / 95 ± 3 points)",
             f"{'parameter':<20}{'subset':<14}{'N':>6}{'68%':>8}{'95%':>8}"]
    for name, by_subset in cal["coverage"].items():
        for subset, row in by_subset.items():
            lines.append(f"{name:<20}{subset:<14}{row['n']:>6}{100 * row['68']:>8.1f}{100 * row['95']:>8.1f}")
    lines.append(f"Worst miss (subsets of >= 30 galaxies): {cal['worst_miss_points']:.1f} points")
    return "\n".join(lines)


def disentanglement_text(metrics: dict) -> str:
    """Response and leak of each latent traversal, re-measured by the classical fit, as text."""
    if "disentanglement" not in metrics:
        return ""
    d = metrics["disentanglement"]
    lines = [f"Latent traversals re-measured with the classical fit (test galaxy {d['galaxy']}; "
             f"{d['failed_fits']} of {d['fits']} fits failed and are left out"
             + (f", as are {d['outside_bounds']} steps that leave the fit's bounds" if d.get("outside_bounds") else "")
             + "): "
             "response = fitted / encoded change (1 ideal); own = largest change of the moved "
             "parameter and leak = of another, in Cramér–Rao sigmas (leak <= 1: within the "
             "noise); cross-talk = leak / own (step-independent)",
             f"{'latent moved':<22}{'response':>10}{'own':>8}{'leak':>8}{'cross-talk':>12}  leaking parameter"]
    for name, t in d.items():
        if isinstance(t, dict) and "leak_crb_units" in t:
            response = "" if t["response"] is None else f"{t['response']:.2f}"
            own, cross = t.get("own_change_crb_units", float("nan")), t.get("cross_talk", float("nan"))
            lines.append(f"z[{name}]".ljust(22) + f"{response:>10}{own:>8.1f}{t['leak_crb_units']:>8.1f}"
                         f"{cross:>12.2f}  {t['leak_parameter']}")
    return "\n".join(lines)


def claims_text(metrics: dict) -> str:
    """The paper's claims for Figs. 2-4 with the measured numbers and verdicts, as text."""
    if not metrics.get("claims"):
        return ""
    lines = ["The paper's claims, measured (report: the paper's sentences)",
             f"{'figure':<8}{'measured':<72}{'value':>9}  {'target':<30}verdict"]
    for c in metrics["claims"]:
        value = "" if c["value"] is None else f"{c['value']:.3g}"
        lines.append(f"{c['figure']:<8}{c['measure']:<72}{value:>9}  {c['target']:<30}{c['verdict'] or '-'}")
    return "\n".join(lines)
