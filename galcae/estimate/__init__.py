"""Estimators: images and their observing conditions in, a table of estimates and errors out.

- :mod:`.cae` — the trained CAE's forward pass (``measure``), with calibrated errors;
- :mod:`.fit` — the classical maximum-likelihood Sérsic fit, one stamp at a time (GalSim + scipy);
- :mod:`.batchfit` — the same likelihood minimised for many stamps at once in PyTorch;
- :mod:`.refine` — the batched fit started at the CAE's estimates, for the bright stamps;
- :mod:`.crb` — the Cramér–Rao bound, the limit every estimator is compared with.

None of them mutates its inputs; none reads files (that is :mod:`galcae.catalog`'s job).
"""
