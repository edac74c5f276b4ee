"""The report's figures, written as PNG files (matplotlib's object API: no global state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..plots import save as _save

LABELS = {"flux": "flux [ADU]", "half_light_radius": "half-light radius [arcsec]",
          "sersic_n": "Sérsic n", "ellipticity": "|g|", "position_angle": "PA [deg]",
          "x": "x [pix]", "y": "y [pix]", "g1": "g1", "g2": "g2"}


def _stretch(images: np.ndarray, softening: float) -> np.ndarray:
    return np.arcsinh(np.asarray(images) / softening)


def reconstructions(originals, recons, softening: float, path, titles=None) -> Path:
    """Fig. 2: test galaxies (top), their reconstructions (middle) and residuals (bottom)."""
    n = len(originals)
    fig = Figure(figsize=(1.6 * n, 5.0))
    axes = fig.subplots(3, n, squeeze=False)
    for i in range(n):
        vmax = _stretch(originals[i], softening).max()
        resid_lim = 5 * softening
        for row, (img, kw) in enumerate((
                (_stretch(originals[i], softening), {"vmin": -2, "vmax": vmax, "cmap": "gray"}),
                (_stretch(recons[i], softening), {"vmin": -2, "vmax": vmax, "cmap": "gray"}),
                (originals[i] - recons[i], {"vmin": -resid_lim, "vmax": resid_lim, "cmap": "RdBu_r"}))):
            ax = axes[row, i]
            ax.imshow(img, origin="lower", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=7)
    for row, label in enumerate(("original", "reconstruction", "residual (±5σ)")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def controlled_sweeps(sweeps: list[dict], path) -> Path:
    """Fig. 3: each supervised latent against the swept parameter (others fixed).

    Each sweep dict has ``parameter``, ``values`` and ``latents`` (name -> array).
    """
    fig = Figure(figsize=(4.2 * len(sweeps), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(sweeps)))
    for ax, sweep in zip(axes, sweeps):
        for name, z in sweep["latents"].items():
            ax.plot(sweep["values"], z, ".", ms=4, label=f"z[{name}]")
        ax.set_xlabel(LABELS.get(sweep["parameter"], sweep["parameter"]))
        ax.set_ylabel("latent value (standardised)")
        ax.set_title(f"sweep of {sweep['parameter']}, others fixed", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def traversals(rows: dict[str, np.ndarray], steps: np.ndarray, softening: float, path) -> Path:
    """Fig. 4: decoded images while one supervised latent moves, one row per latent."""
    names = list(rows)
    fig = Figure(figsize=(1.5 * len(steps), 1.7 * len(names)))
    axes = fig.subplots(len(names), len(steps), squeeze=False)
    vmax = max(_stretch(r, softening).max() for r in rows.values())
    for r, name in enumerate(names):
        for c, step in enumerate(steps):
            ax = axes[r, c]
            ax.imshow(_stretch(rows[name][c], softening), origin="lower", cmap="gray",
                      vmin=-2, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == len(names) - 1:
                ax.set_xlabel(f"Δz = {step:+.1f}", fontsize=8)
        axes[r, 0].set_ylabel(f"z[{name}]", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def remeasured_traversals(result: dict, path) -> Path:
    """One panel per moved latent: every parameter of the decoded galaxy, re-measured by the
    classical fit, as its change in units of its Cramér–Rao bound (grey band: within the noise)."""
    moved = list(result["traversals"])
    cols = min(4, len(moved))
    rows = -(-len(moved) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.9 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    measured = list(result["traversals"][moved[0]]["change_in_crb_units"])
    colour = {q: f"C{i}" for i, q in enumerate(measured)}  # one colour per parameter, every panel
    for ax, name in zip(axes, moved):
        t = result["traversals"][name]
        for q, change in t["change_in_crb_units"].items():
            ax.plot(t["delta_z"], change, marker="o", ms=3, color=colour[q], label=q,
                    lw=3 if q == name else 1, zorder=3 if q == name else 2)
        ax.axhspan(-1, 1, color="0.85", zorder=0)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"move z[{name}]: leak {t['leak']:.1f}σ ({t['leak_parameter']}),\n"
                     f"cross-talk {t.get('cross_talk', float('nan')):.2f}", fontsize=8)
        ax.set_xlabel("Δz (latent units)", fontsize=8)
    axes[0].set_ylabel("re-measured change / σ_CRB", fontsize=8)
    axes[0].legend(fontsize=6, ncol=2, title="thick: the moved one", title_fontsize=6)
    for ax in axes[len(moved):]:
        ax.set_visible(False)
    return _save(fig, path)


def calibration(table: dict, path) -> Path:
    """Coverage of the 68% and 95% intervals per parameter and S/N bin, with ±3-point bands."""
    names = list(table)
    fig = Figure(figsize=(max(5, 1.1 * len(names) + 2), 3.2))
    axes = fig.subplots(1, 2)
    for ax, level in zip(axes, ("68", "95")):
        subsets = [s for s in next(iter(table.values())) if table[names[0]][s]["n"] >= 10]
        for j, subset in enumerate(subsets):
            ax.plot(np.arange(len(names)) + 0.08 * (j - len(subsets) / 2),
                    [100 * table[n][subset][level] for n in names], "o", ms=4, label=subset)
        nominal = float(level)
        ax.axhspan(nominal - 3, nominal + 3, color="0.85", zorder=0)
        ax.axhline(nominal, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
        ax.set_title(f"{level}% interval: coverage [%]", fontsize=9)
    if subsets:  # a held-out set of fewer than 10 galaxies has no subset worth a point
        axes[1].legend(fontsize=6)
    return _save(fig, path)


def r2_comparison(r2_table: dict[str, dict[str, float]], path) -> Path:
    """Fig. 5: R² per parameter for the CAE and the PCA baselines."""
    methods = list(r2_table)
    names = list(r2_table[methods[0]])
    fig = Figure(figsize=(2.2 + 2.2 * len(names), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        values = [r2_table[method][n] for n in names]
        bars = ax.bar(np.arange(len(names)) + (m - (len(methods) - 1) / 2) * width, values,
                      width, label=method)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(names)), [LABELS.get(n, n) for n in names])
    ax.set_ylabel("R² on the test split")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylim(min(-0.1, min(min(t.values()) for t in r2_table.values()) - 0.05), 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def predicted_vs_true(truth: dict, predicted: dict, snr, path) -> Path:
    """Predicted against true value per supervised parameter, coloured by S/N."""
    names = list(predicted)
    fig = Figure(figsize=(4.2 * len(names), 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names):
        t, p = np.asarray(truth[name]), np.asarray(predicted[name])
        sc = ax.scatter(t, p, c=np.log10(np.clip(snr, 1, None)), s=6, cmap="viridis")
        lims = [min(t.min(), p.min()), max(t.max(), p.max())]
        ax.plot(lims, lims, "k--", lw=0.8)
        if t.min() > 0 and p.min() > 0:
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # minor labels overlap on short log ranges
                axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"true {LABELS.get(name, name)}")
        ax.set_ylabel("CAE")
    fig.colorbar(sc, ax=axes[-1], label="log10 S/N")
    return _save(fig, path)


def methods_vs_true(truth: dict, estimates: dict[str, dict], names, path) -> Path:
    """Predicted against true value: one row per method, one column per parameter."""
    fig = Figure(figsize=(4.0 * len(names), 3.4 * len(estimates)))
    axes = np.atleast_2d(fig.subplots(len(estimates), len(names), squeeze=False))
    for row, (method, values) in zip(axes, estimates.items()):
        for ax, name in zip(row, names):
            t, p = np.asarray(truth[name], float), np.asarray(values[name], float)
            ax.scatter(t, p, s=5, alpha=0.7)
            lims = [np.nanmin(t), np.nanmax(t)]
            ax.plot(lims, lims, "k--", lw=0.8)
            ax.set_xlabel(f"true {LABELS.get(name, name)}")
            ax.set_ylabel(method)
    return _save(fig, path)


def error_vs_snr(truth: dict, estimates: dict[str, dict], crb: dict, snr, names, path,
                 relative=("flux", "half_light_radius", "sersic_n")) -> Path:
    """Error against S/N per method, with the ±1 sigma Cramér–Rao envelope (per galaxy)."""
    fig = Figure(figsize=(5.2 * len(names), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(names), gridspec_kw={"wspace": 0.35}))
    order = np.argsort(snr)
    for ax, name in zip(axes, names):
        t = np.asarray(truth[name], float)
        scale = t if name in relative else 1.0
        bound = (np.asarray(crb[name]) / scale)[order] if name in relative else np.asarray(crb[name])[order]
        ax.fill_between(np.asarray(snr)[order], -bound, bound, color="0.85", label="±1σ CRB")
        for method, values in estimates.items():
            if name in values:
                err = np.asarray(values[name], float) / t - 1 if name in relative else np.asarray(values[name]) - t
                ax.scatter(snr, err, s=5, alpha=0.7, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("matched-filter S/N")
        ax.set_ylabel(("relative error of " if name in relative else "error of ") + name)
        ax.set_ylim(-1, 1) if name in relative else None
        ax.axhline(0, color="k", lw=0.6)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def time_per_galaxy(seconds: dict[str, float], path) -> Path:
    """Wall time per galaxy of each method, log scale."""
    fig = Figure(figsize=(5.0, 2.8))
    ax = fig.subplots()
    methods = list(seconds)
    ax.barh(methods, [seconds[m] for m in methods])
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds per galaxy (2-core CPU, same run)")
    for i, m in enumerate(methods):
        ax.text(seconds[m], i, f" {seconds[m]:.2g} s", va="center", fontsize=8)
    return _save(fig, path)
