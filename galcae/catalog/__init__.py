"""Catalogs from files: ``galcae infer`` and ``galcae fit`` as two uses of one machinery.

- :mod:`.sources` — what the inputs are (FITS cubes, stamps, fields, datasets) and their chunks;
- :mod:`.stamps` — per-stamp cleaning and the flags every catalog carries;
- :mod:`.chunks` — planning, running (in-process or on Dask) and resuming the chunks;
- :mod:`.writers` — Parquet parts and the final Parquet or FITS catalog, with units;
- :mod:`.infer`, :mod:`.fit` — the per-chunk work and the columns of each kind of catalog.
"""
