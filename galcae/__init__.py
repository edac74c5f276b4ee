"""galcae: conditional autoencoders that measure galaxy photometric parameters.

Implements Leung, Yan & Yin, "A Generative Model for Disentangling Galaxy Photometric
Parameters" (arXiv:2507.15898). Importing galcae does no work and writes no files; the
functions below import their stage on first use.

- ``load_config(stage, config="paper", overrides=())``: a stage's config.
- ``simulate_dataset(cfg, out, workers=1)``: render a dataset.
- ``train_model(dataset, run_dir, cfg)``: train the CAE.
- ``evaluate_run(run_dir, dataset, sweeps=())``: the paper's Section 4.
- ``load_model(path)``: a trained model, or a shipped one by name (``"survey"``);
  ``.predict(images)`` gives parameters.
- ``infer_catalog(model, inputs, out, workers=1, options=InferOptions())``: FITS files in,
  a catalog out, refined as the model card says unless ``options`` say otherwise.
- ``fit_catalog(inputs, out, cfg)``: the classical fit of the same inputs, into a catalog.
- ``measure(model, images, conditions)``, ``refine(sim, images, conditions, estimates, min_snr)``:
  the estimators behind them, on arrays: images and conditions in, a table of estimates
  and errors out, nothing changed in place.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_config": ("galcae.config", "load_stage"),
    "simulate_dataset": ("galcae.simulate", "simulate_dataset"),
    "train_model": ("galcae.train", "train_model"),
    "evaluate_run": ("galcae.evaluate", "evaluate_run"),
    "load_model": ("galcae.checkpoint", "load_model"),
    "infer_catalog": ("galcae.catalog.infer", "infer_catalog"),
    "InferOptions": ("galcae.catalog.infer", "InferOptions"),
    "fit_catalog": ("galcae.catalog.fit", "fit_catalog"),
    "measure": ("galcae.estimate.cae", "measure"),
    "refine": ("galcae.estimate.refine", "refine"),
    "Dataset": ("galcae.dataset", "Dataset"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'galcae' has no attribute {name!r}")
