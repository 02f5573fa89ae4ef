"""Running and publishing: sweeps on Dask, the book, reporting helpers for notebooks."""
