"""Errors that mean "the user must change something" (input, parameters, files), kept in a module
without heavy imports so entry points can catch them before TensorFlow is loaded."""

from __future__ import annotations


class WeightsError(RuntimeError):
    """The base's weights cannot be loaded; the message says where to put the file by hand."""


class TrainingDataError(ValueError):
    """The prepared data cannot train a classifier (too few writers, no validation images...)."""


class EvaluationError(ValueError):
    """The prepared data has nothing to evaluate on (no test genuine signatures)."""


class CalibrationError(ValueError):
    """The calibration data cannot support the asked threshold (no unknowns, or too few)."""


class VerifierError(ValueError):
    """The writer-dependent verifier cannot be fitted or read (too few writers, a missing or foreign file)."""
