"""A pipeline run: stage order, DVC records, what a run request may change, its Prefect API, lifelines."""
