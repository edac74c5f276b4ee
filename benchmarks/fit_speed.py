"""The classical Sérsic fit three ways, side by side on the same stamps: scipy + GalSim, one
stamp at a time (`galcae fit`), the batched PyTorch fit (`galcae infer --refine-snr`)
through each stamp's Moffat, and the same through each stamp's PSF image (its Moffat
drawn by GalSim, `--psf-size` pixels square, a different image per stamp), all started
from the shipped CAE's estimates.

    python benchmarks/fit_speed.py                  # 64 fresh survey galaxies above S/N 25
    python benchmarks/fit_speed.py --n 128 --max-nfev 5

Prints the time per stamp of each (one process, the cores it has), how often each
converged, and how far apart their answers are in units of the GalSim fit's errors.
"""

import argparse
import time

import numpy as np
import torch

from galcae.checkpoint import load_model
from galcae.config import load_stage
from galcae.estimate.batchfit import fit_batch
from galcae.estimate.cae import measure
from galcae.estimate.fit import fit_stamp
from galcae.params import FIT_PARAMETERS
from galcae.physics import make_psf
from galcae.render import transform_tables
from galcae.simulate import draw_parameters, render_chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="stamps fitted")
    parser.add_argument("--min-snr", type=float, default=25.0)
    parser.add_argument("--max-nfev", type=int, default=100,
                        help="the GalSim fit's limit (`galcae fit`'s default; refinement used 5 before)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--psf-size", type=int, default=63, help="PSF images' pixels per side (odd)")
    args = parser.parse_args()

    cfg = load_stage("simulate", "survey", [f"n_galaxies={8 * args.n}", f"seed={args.seed}"])
    truth = draw_parameters(cfg)
    rendered = render_chunk(cfg, truth)
    pick = np.flatnonzero((rendered["status"] == "ok") & (rendered["snr"] >= args.min_snr))[:args.n]
    images = rendered["images"][pick]
    model = load_model("survey", device="cpu")
    start = measure(model, images, {k: truth[k][pick] for k in ("psf_fwhm", "psf_beta")})
    conditions = {k: truth[k][pick] for k in ("psf_fwhm", "psf_beta", "sky_level")}
    print(f"{len(pick)} fresh survey galaxies with S/N >= {args.min_snr:g} (seed {args.seed}); "
          f"torch threads: {torch.get_num_threads()}")

    transform_tables()  # built once per process (about 5 s): not a per-stamp cost
    t0 = time.perf_counter()
    batch = fit_batch(images, cfg, conditions, start)
    torch_seconds = time.perf_counter() - t0

    import galsim as gs

    psf_images = np.stack([gs.Moffat(beta=truth["psf_beta"][i], fwhm=truth["psf_fwhm"][i]).drawImage(
        nx=args.psf_size, ny=args.psf_size, scale=cfg.pixel_scale).array for i in pick])
    psf_images /= psf_images.sum(axis=(1, 2), keepdims=True)
    t0 = time.perf_counter()
    through_image = fit_batch(images, cfg, {"sky_level": conditions["sky_level"]}, start, psf=psf_images)
    image_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    galsim = []
    for j, i in enumerate(pick):
        galaxy_cfg = cfg.for_galaxy({k: truth[k][i] for k in truth})
        galsim.append(fit_stamp(images[j], galaxy_cfg, make_psf(galaxy_cfg), max_nfev=args.max_nfev,
                                guess={k: start[k][j] for k in FIT_PARAMETERS}))
    galsim_seconds = time.perf_counter() - t0

    n = len(pick)
    print(f"\n{'fit':<28}{'ms per stamp':>14}{'converged':>12}")
    print(f"{'scipy + GalSim, one by one':<28}{1e3 * galsim_seconds / n:>14.0f}"
          f"{sum(g['status'] == 'ok' for g in galsim):>8} / {n}")
    print(f"{'PyTorch, batched':<28}{1e3 * torch_seconds / n:>14.0f}"
          f"{int((batch['status'] == 'ok').sum()):>8} / {n}")
    print(f"{'PyTorch, through PSF images':<28}{1e3 * image_seconds / n:>14.0f}"
          f"{int((through_image['status'] == 'ok').sum()):>8} / {n}")
    print(f"speed-up of the batched fit over scipy + GalSim: {galsim_seconds / torch_seconds:.1f}x; "
          f"a PSF image costs {image_seconds / torch_seconds:.2f}x a Moffat (its transform made once per "
          f"image, here one per stamp)\n")
    both = np.array([g["status"] == "ok" for g in galsim]) & (batch["status"] == "ok")
    print(f"PyTorch - GalSim, in units of the GalSim fit's error ({int(both.sum())} stamps both converged):")
    print(f"{'parameter':<20}{'median |diff|':>15}{'max |diff|':>12}{'error ratio':>13}")
    for name in FIT_PARAMETERS:
        ref = np.array([g[name] for g in galsim])[both]
        err = np.array([g[f"{name}_err"] for g in galsim])[both]
        diff = np.abs(batch[name][both] - ref) / err
        ratio = np.median(batch[f"{name}_err"][both] / err)
        print(f"{name:<20}{np.median(diff):>15.3f}{diff.max():>12.3f}{ratio:>13.3f}")
    same = (batch["status"] == "ok") & (through_image["status"] == "ok")
    print(f"\nThrough the PSF image - through the Moffat, in units of the Moffat fit's error ({int(same.sum())} "
          f"stamps; the image holds the Moffat's light within {args.psf_size} pixels):")
    print(f"{'parameter':<20}{'median diff':>15}{'max |diff|':>12}")
    for name in FIT_PARAMETERS:
        diff = (through_image[name][same] - batch[name][same]) / batch[f"{name}_err"][same]
        print(f"{name:<20}{np.median(diff):>15.3f}{np.abs(diff).max():>12.3f}")


if __name__ == "__main__":
    main()
