"""Core logic of signature-pipeline: plain, typed functions that the Prefect flows wire together."""
