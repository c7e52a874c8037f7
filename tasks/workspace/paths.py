"""The one place that knows where the pipeline's files live.

Every stage receives a `ProjectPaths` built from the workspace root (the folder that holds
`params.yaml` and `dvc.yaml`); no function builds a path from a literal of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARAMS_FILE_NAME = "params.yaml"


@dataclass(frozen=True)
class ProjectPaths:
    """Locations of every input and output of the pipeline, relative to one workspace root."""

    root: Path

    @classmethod
    def from_root(cls, root: Path | str) -> ProjectPaths:
        """Build the paths for the workspace at `root` (resolved to an absolute path)."""
        return cls(root=Path(root).resolve())

    @property
    def params_file(self) -> Path:
        return self.root / PARAMS_FILE_NAME

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def raw_dir(self) -> Path:
        """Stage `download` output: the dataset as distributed, never modified afterwards."""
        return self.data_dir / "raw"

    @property
    def downloads_dir(self) -> Path:
        """Archives being or already downloaded; kept outside DVC outputs so a download can resume."""
        return self.data_dir / "downloads"

    @property
    def prepared_dir(self) -> Path:
        """Stage `prepare` output: manifest, preprocessed images and the data report."""
        return self.data_dir / "prepared"

    @property
    def prepared_images_dir(self) -> Path:
        return self.prepared_dir / "images"

    @property
    def manifest_file(self) -> Path:
        return self.prepared_dir / "manifest.csv"

    @property
    def skipped_file(self) -> Path:
        return self.prepared_dir / "skipped.csv"

    @property
    def data_report_file(self) -> Path:
        return self.prepared_dir / "data_report.md"

    @property
    def enrolments_dir(self) -> Path:
        """The enrolment record (`sigpipe enrol` / `remove`): writers added from references, dataset writers
        removed. A dep of `prepare`, which adds the first and leaves out the second (docs/enrolment.md)."""
        return self.data_dir / "enrolments"

    def is_enrolled_reference(self, manifest_path: str) -> bool:
        """Whether a manifest row's path is an enrolled reference (under the enrolment record) rather than a
        dataset image: the verifier's background is the dataset's training images (`tasks.model.verifier`)."""
        return manifest_path.startswith(self.enrolments_dir.relative_to(self.root).as_posix() + "/")

    @property
    def embeddings_dir(self) -> Path:
        """The frozen base's embeddings of every prepared image, one .npz per split (embed stage)."""
        return self.data_dir / "embeddings"

    @property
    def embed_metrics_file(self) -> Path:
        """What the embed stage embedded (images, views, base weights digest): a DVC metric."""
        return self.metrics_dir / "embed.json"

    @property
    def embed_run_file(self) -> Path:
        """How the last embedding ran (wall time, images per second): not a DVC output, it differs per run."""
        return self.data_dir / "embed_run.json"

    @property
    def head_file(self) -> Path:
        """The identification head's arrays (standardisation, optional hidden layer, output layer): the
        train stage's output, applied with NumPy by evaluate and folded into the Keras model by package."""
        return self.models_dir / "head.npz"

    @property
    def train_checkpoint_dir(self) -> Path:
        """Per-epoch state of an unfinished training run, removed when the run completes."""
        return self.data_dir / "checkpoints" / "train"

    @property
    def classifier_file(self) -> Path:
        """The packaged classifier (base + head, float32): the package stage's output, logged by register."""
        return self.models_dir / "classifier.keras"

    @property
    def package_record_file(self) -> Path:
        """What package built and checked (the classifier file's SHA-256, classes, image size, base digest):
        register logs the classifier only when the file is still that one."""
        return self.metrics_dir / "package.json"

    @property
    def verifier_file(self) -> Path:
        """The writer-dependent verifier (one linear model per writer on the base's embeddings)."""
        return self.models_dir / "verifier.npz"

    @property
    def verifier_cache_file(self) -> Path:
        """The last fitted verifier with its training problem's digest (tasks.model.verifier_cache): written by
        train, enrol and remove, read by the next enrolment; not a stage output (a cache, rewritten freely)."""
        return self.models_dir / "verifier_cache.npz"

    @property
    def labels_file(self) -> Path:
        """Class index to writer id, in the classifier's output order."""
        return self.models_dir / "labels.json"

    @property
    def train_run_file(self) -> Path:
        """The MLflow run of the last training, for the stages that log after it, and what differs from
        one run to the next (device, wall times, reuse): not a DVC output, so dvc.lock stays reproducible."""
        return self.models_dir / "train_run.json"

    @property
    def train_metrics_file(self) -> Path:
        """Epochs run, best epoch, final and best loss/accuracy: a report (a DVC out, not a metric)."""
        return self.metrics_dir / "train.json"

    @property
    def learning_curve_file(self) -> Path:
        return self.plots_dir / "learning_curve.png"

    @property
    def scores_file(self) -> Path:
        """Logits, verifier scores and embeddings of every val, test and calibration image
        (evaluate stage), read by calibrate and by the quality benchmark."""
        return self.data_dir / "scores" / "scores.npz"

    @property
    def evaluate_metrics_file(self) -> Path:
        """Headline evaluation numbers, what `dvc metrics show` lists (a subset of the details)."""
        return self.metrics_dir / "evaluate.json"

    @property
    def evaluate_details_file(self) -> Path:
        """Every evaluation number (what registration and the run report read)."""
        return self.metrics_dir / "evaluate_details.json"

    @property
    def per_writer_file(self) -> Path:
        return self.metrics_dir / "per_writer.csv"

    @property
    def confusion_matrix_file(self) -> Path:
        return self.plots_dir / "confusion_matrix.png"

    @property
    def roc_det_file(self) -> Path:
        return self.plots_dir / "roc_det.png"

    @property
    def score_distributions_file(self) -> Path:
        return self.plots_dir / "score_distributions.png"

    @property
    def calibrate_metrics_file(self) -> Path:
        """Headline calibration numbers, what `dvc metrics show` lists (a subset of the details)."""
        return self.metrics_dir / "calibrate.json"

    @property
    def calibrate_details_file(self) -> Path:
        """Every calibration number (what registration and the run report read)."""
        return self.metrics_dir / "calibrate_details.json"

    @property
    def calibration_file(self) -> Path:
        """Temperature, threshold and unknown class id: what inference applies to the classifier."""
        return self.models_dir / "calibration.json"

    @property
    def reliability_file(self) -> Path:
        return self.plots_dir / "reliability.png"

    @property
    def register_metrics_file(self) -> Path:
        """The registered version and its alias, what `dvc metrics show` lists."""
        return self.metrics_dir / "register.json"

    @property
    def register_details_file(self) -> Path:
        """The registration decision: version, alias, reason, and the numbers compared."""
        return self.metrics_dir / "register_details.json"

    @property
    def params_check_file(self) -> Path:
        """Stage `check_params` output: written only when every parameter is valid; its content never
        changes, so a rerun of the check never reruns the stages after it."""
        return self.data_dir / "params_check.json"

    @property
    def pipeline_lock_file(self) -> Path:
        """Held by a running pipeline flow: DVC cannot run twice in one workspace."""
        return self.data_dir / ".pipeline.lock"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def prepare_metrics_file(self) -> Path:
        return self.metrics_dir / "prepare.json"

    @property
    def download_metrics_file(self) -> Path:
        """Where the data came from and how many files and bytes it holds (raw data stays pristine)."""
        return self.metrics_dir / "download.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def keys_dir(self) -> Path:
        """The model signing key pair (`tasks.registration.signing`): outside the registry, never committed."""
        return self.root / ".sigpipe"

    @property
    def signing_key_file(self) -> Path:
        return self.keys_dir / "model-signing.key"

    @property
    def verify_key_file(self) -> Path:
        return self.keys_dir / "model-signing.pub"

    @property
    def mlruns_dir(self) -> Path:
        return self.root / "mlruns"

    @property
    def mlflow_tracking_uri(self) -> str:
        """Absolute SQLite URI (DESIGN section 4: relative URIs lose runs under `dvc exp run --temp`)."""
        return f"sqlite:///{self.mlruns_dir / 'mlflow.db'}"
