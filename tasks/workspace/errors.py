"""Errors that mean "the user must change something" (input, parameters, files), kept in a module
without heavy imports so entry points can catch them before TensorFlow is loaded."""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter file is missing, unreadable or holds an invalid value."""


class ListingError(ConfigError):
    """The images to score cannot be listed: a missing source, a listing without a path column, none."""


class DownloadError(RuntimeError):
    """The dataset could not be fetched; the message says what failed and what to do."""


class UnsafeArchiveError(ValueError):
    """An archive holds a member that would be written outside the target, or a link."""


class ArchiveLimitError(UnsafeArchiveError):
    """An archive is over a size limit (bytes, members, compression ratio): a zip bomb or a wrong file."""


class NotAnArchiveError(ValueError):
    """A file is neither a zip nor a tar archive (possibly a truncated download)."""


class LayoutError(ValueError):
    """The raw data folder does not hold the layout that `data.layout` names."""


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


class EmbeddingsError(ValueError):
    """The embed stage's files are missing, unreadable, or older than the manifest they should embed."""


class PipelineBusyError(RuntimeError):
    """Another pipeline run holds the workspace (DVC cannot run twice in one workspace)."""


class StageFailedError(RuntimeError):
    """A stage's command failed; the message names the stage and ends with its output."""


class ModelInputError(ValueError):
    """What was passed to the packaged model has none of the columns it reads (`image`, or `path` locally)."""


class ModelFileError(ValueError):
    """A model file (classifier, verifier, calibration, preprocessing) is missing or cannot be read."""


class CorruptModelError(ModelFileError):
    """A packaged (registered) model's file is missing, damaged or differs from its recorded digest."""


class UntrustedModelError(CorruptModelError):
    """A registered model version is not signed by the register stage, its signature does not match, or
    one of its files differs from the signed list: it is refused, never loaded."""


class TrainingBusyError(RuntimeError):
    """Another training holds the checkpoint folder; the message names the holder."""


class ScorerError(RuntimeError):
    """A model server (`sigpipe serve`) does not answer, or refuses a scoring request."""


class ServiceError(RuntimeError):
    """A background server (tasks/services/supervisor.py) exited or did not answer its health check in time."""


class TrackingServerLostError(RuntimeError):
    """The MLflow tracking server stopped answering while a stage was logging to it (after MLflow's retries)."""


class ArtifactStoreError(OSError):
    """Writing to the MLflow artifact store failed (e.g. a full disk); partial files were removed."""


class EnrolmentError(ValueError):
    """`sigpipe enrol` or `remove` refused: a bad reference, a writer id, or a workspace not ready for it."""
