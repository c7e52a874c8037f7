"""Prefect flows of signature-pipeline: one module per stage, each runnable as `python -m flows.<stage>`."""
