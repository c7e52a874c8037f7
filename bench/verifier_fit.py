"""How long fitting the writer-dependent verifier takes: one Cholesky per writer against one shared
eigendecomposition and a Woodbury solve per writer (`tasks.model.verifier.fit_writer_verifier`).

The fit runs in the train stage and in every enrolment (which refits every writer). The data are
random float32 embeddings shaped like CEDAR's training set (4,675 rows: 55 writers of unequal sizes,
about 85 rows each, clean and augmented views), at the embedding's present width (2048) and the
coming one (3872). In one process, per width, the baseline (`per_writer_cholesky_fit`, the fit as it
was before: one (features + 1)^2 Cholesky factorisation per writer) and then today's fit are timed
on the same data; the results give both times, their ratio, and the largest difference between the
two kernels and biases, with wall and CPU seconds and the load average before and after. Only the
ratio within one run compares: the machine may be shared.

Usage: python bench/verifier_fit.py [--features 2048 3872] [--whitening 0.0] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.peers import machine  # noqa: E402
from tasks.model.verifier import (  # noqa: E402
    WriterVerifier,
    fit_writer_verifier,
    standardisation,
    within_writer_whitening,
)
from tasks.model.verifier_solve import class_weights  # noqa: E402

ROWS = 4675  # CEDAR's training set: 55 writers' clean and augmented training views
WRITERS = 55
REGULARIZATION = 0.003  # params.yaml's model.verifier_regularization
CENTRE_SPREAD = 1.0  # writer centres against unit noise: a writer is visible in its embeddings
SEED = 0
OUTPUT = PROJECT_ROOT / "bench" / "results" / "verifier_fit.json"


def per_writer_cholesky_fit(
    embeddings: np.ndarray, labels: np.ndarray, writer_count: int, regularization: float, whitening: float = 0.0
) -> WriterVerifier:
    """The baseline: `fit_writer_verifier` before the shared eigendecomposition, one Cholesky
    factorisation of the (features + 1)^2 weighted Gram matrix per writer (copied unchanged)."""
    labels = np.asarray(labels)
    mean, scale = standardisation(embeddings)
    standardised = (np.asarray(embeddings, dtype=np.float64) - mean) / scale
    transform = within_writer_whitening(standardised, labels, whitening) if whitening > 0 else None
    if transform is not None:
        standardised = standardised @ transform
    design = np.hstack([standardised, np.ones((len(labels), 1))])
    gram = design.T @ design
    column_sums = design.sum(axis=0)
    penalty = np.full(design.shape[1], regularization)
    penalty[-1] = 0.0  # the bias is not penalised
    kernel = np.empty((design.shape[1] - 1, writer_count))
    bias = np.empty(writer_count)
    for writer in range(writer_count):
        own = design[labels == writer]
        positive_weight, negative_weight = class_weights(len(own), len(labels) - len(own))
        weighted_gram = negative_weight * gram + (positive_weight - negative_weight) * (own.T @ own)
        right = (positive_weight + negative_weight) * own.sum(axis=0) - negative_weight * column_sums
        solution = scipy.linalg.cho_solve(scipy.linalg.cho_factor(weighted_gram + np.diag(penalty)), right)
        kernel[:, writer], bias[writer] = solution[:-1], solution[-1]
    if transform is not None:
        kernel = transform @ kernel
    return WriterVerifier(mean, scale, kernel, bias)


def cedar_shaped_embeddings(features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(ROWS, features) float32 embeddings of WRITERS writers of unequal sizes (multinomial, about 85 each)."""
    sizes = rng.multinomial(ROWS, np.full(WRITERS, 1 / WRITERS))
    labels = np.repeat(np.arange(WRITERS), sizes)
    centres = rng.normal(0, CENTRE_SPREAD, (WRITERS, features))
    return (centres[labels] + rng.normal(0, 1, (ROWS, features))).astype(np.float32), labels


def timed_fit(
    fit: Callable[..., WriterVerifier], embeddings: np.ndarray, labels: np.ndarray, whitening: float
) -> tuple[float, float, WriterVerifier]:
    """Wall and CPU seconds (all of this process's threads) of one fit with params.yaml's
    regularization, and the verifier it gives. CPU seconds move less than wall seconds when another
    job shares the cores."""
    started, started_cpu = time.perf_counter(), time.process_time()
    verifier = fit(embeddings, labels, WRITERS, REGULARIZATION, whitening)
    return time.perf_counter() - started, time.process_time() - started_cpu, verifier


def measure(features: int, whitening: float) -> dict[str, object]:
    """Both fits on the same CEDAR-shaped data of `features` dimensions: seconds, ratio, differences."""
    embeddings, labels = cedar_shaped_embeddings(features, np.random.default_rng(SEED))
    load_before = os.getloadavg()[0]
    baseline_seconds, baseline_cpu, baseline = timed_fit(per_writer_cholesky_fit, embeddings, labels, whitening)
    shared_seconds, shared_cpu, shared = timed_fit(fit_writer_verifier, embeddings, labels, whitening)
    counts = np.bincount(labels)
    return {
        "features": features,
        "rows": ROWS,
        "writers": WRITERS,
        "rows_per_writer": {"min": int(counts.min()), "max": int(counts.max())},
        "whitening": whitening,
        "per_writer_cholesky_seconds": round(baseline_seconds, 2),
        "shared_eigendecomposition_seconds": round(shared_seconds, 2),
        "speedup": round(baseline_seconds / shared_seconds, 2),
        "per_writer_cholesky_cpu_seconds": round(baseline_cpu, 2),
        "shared_eigendecomposition_cpu_seconds": round(shared_cpu, 2),
        "cpu_speedup": round(baseline_cpu / shared_cpu, 2),
        "kernel_max_abs_difference": float(np.abs(shared.kernel - baseline.kernel).max()),
        "kernel_max_abs": float(np.abs(baseline.kernel).max()),
        "bias_max_abs_difference": float(np.abs(shared.bias - baseline.bias).max()),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, nargs="+", default=[2048, 3872])
    parser.add_argument("--whitening", type=float, default=0.0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args()
    results = {
        "machine": machine(),
        "cores": os.cpu_count(),
        "numpy": np.__version__,
        "regularization": REGULARIZATION,
        "results": [measure(features, arguments.whitening) for features in arguments.features],
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
