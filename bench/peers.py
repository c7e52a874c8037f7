"""The models the quality and selection benches compare, all on one embedding file (bench/embeddings.py).

The file holds the frozen base's embedding of every prepared image and augmented views of the
genuine training images. `load_embedded` redoes `prepare`'s split on it (`tasks.data.split`, with
params.yaml's `prepare` rules, unenrolled writers included), so the benches see the pipeline's
enrolled, unenrolled, validation, test and calibration rows. Every model is fitted on training
rows only (never on validation: thresholds and confidences are fitted on validation claims) and
scores the same rows into a `tasks.evaluation.scores.ScoreTable`, its identification scores as `logits` and
its claim scores ("writer w signed image i") as `verification`, so `tasks.evaluation.partitions` evaluates
every model on the same writers and images:

- `ridge_scorer`: the pipeline's default head, the writer-dependent ridge verifier
  (`tasks.model.verifier`); its scores both rank writers and verify claims;
- `logistic_regression_scorer`: issue 11's peer, StandardScaler + LogisticRegression; claim score
  the predicted probability of the claimed writer;
- `writer_svm_scorer`: sigver's protocol, one linear SVM per writer (its references against the
  other writers' references, balanced classes, no forgery); claim score its decision value;
- `keras_head_scorer`: a Keras softmax head on the embeddings (the pipeline's `linear` and `mlp`
  heads, and the reference recipe's Dense(1024) head); claim score the softmax probability.
  TensorFlow is imported there only.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tasks.data.datasets.base import SignatureRecord
from tasks.data.split import SplitRules, assign_splits, trained_writers
from tasks.evaluation.scores import NO_CLASS, UNENROLLED_SPLIT, ScoreTable

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
# The rows a ScoreTable holds, as the evaluate stage scores them.
SCORED_SPLITS = ("val", "test", "calibration", "unenrolled")
NO_AUGMENTATION = "none"
GENUINE = "genuine"
PEER_MAX_ITERATIONS = 2000  # LogisticRegression(max_iter=2000), as issue 11's peer
SVM_PENALTY = 1.0  # scikit-learn's default C, as sigver's writer-dependent SVMs
KERAS_SEED = 42  # train.seed's default
KERAS_BATCH = 16
KERAS_RATE = 1e-3
KERAS_PATIENCE = 10
KERAS_EPOCHS = 100
KERAS_DROPOUT = 0.1
PREDICT_BATCH = 512
TINY_PROBABILITY = 1e-12

# A fitted model: embeddings -> (identification scores, claim scores), both (images, writers).
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EmbeddedSplit:
    """An embedding file's rows with the pipeline's split, and its augmented training views.

    `claimed` is each row's writer as a class index (`NO_CLASS` for a writer never enrolled);
    `train_rows` the enrolled training genuine rows; `views[name]` the (views, train_rows, features)
    embeddings of augmentation `name` of exactly those rows.
    """

    clean: np.ndarray
    views: dict[str, np.ndarray]
    train_rows: np.ndarray
    claimed: np.ndarray
    writers: np.ndarray
    kinds: np.ndarray
    splits: np.ndarray
    paths: np.ndarray
    classes: tuple[str, ...]
    meta: dict[str, object]

    @property
    def class_count(self) -> int:
        return len(self.classes)


def read_params(path: Path = PARAMS_FILE) -> dict[str, dict[str, object]]:
    """params.yaml as plain dictionaries (the benches read a few keys of several stages)."""
    return yaml.safe_load(path.read_text())


def params_embedding(params: dict[str, dict[str, object]] | None = None):  # -> EmbeddingSpec
    """The embedding params.yaml's `model` group describes (`model.ink`, `model.pooled_layers`)."""
    from tasks.model.embedding_spec import EmbeddingSpec

    return EmbeddingSpec.from_dict((params or read_params())["model"])


def partition_settings(params: dict[str, dict[str, object]]) -> dict[str, object]:
    """What both benches read from params.yaml to split, partition and calibrate as the stages do, flat."""
    return {
        "prepare": params["prepare"],
        "views": int(params["train"]["augmented_views"]),
        "calibration_fraction": float(params["prepare"]["calibration_fraction"]),
        "partitions": int(params["evaluate"]["partitions"]),
        "partition_seed": int(params["evaluate"]["partition_seed"]),
        "objective": params["calibrate"]["objective"],
        "target_far": float(params["calibrate"]["target_far"]),
    }


def results_header(data: EmbeddedSplit, embeddings: Path, settings: dict[str, object]) -> dict[str, object]:
    """The first keys of both benches' results files: the data, the embedding file, the settings, the writers."""
    return {
        "dataset": data.meta["dataset"],
        "size": data.meta["size"],
        "weights": data.meta["weights"],
        "embeddings": {"file": embeddings.name, "meta": data.meta},
        "settings": settings,
        "enrolled_writers": data.class_count,
        "unenrolled_writers": len(np.unique(data.writers[data.splits == UNENROLLED_SPLIT])),
    }


def split_rules(prepare: dict[str, object]) -> SplitRules:
    """The split rules of a `prepare` parameter group."""
    return SplitRules(
        test_per_writer=int(prepare["test_per_writer"]),
        train_per_writer=int(prepare["train_per_writer"]),
        val_fraction=float(prepare["val_fraction"]),
        calibration_fraction=float(prepare["calibration_fraction"]),
        seed=int(prepare["seed"]),
        unenrolled_writers=float(prepare["unenrolled_writers"]),
    )


def load_embedded(path: Path, rules: SplitRules) -> EmbeddedSplit:
    """Read an embedding file and split its rows as `prepare` would with `rules`."""
    with np.load(path, allow_pickle=False) as arrays:
        columns = {name: arrays[name] for name in arrays.files}
    records = [
        SignatureRecord(str(writer), str(kind), str(sample), str(row_path))
        for writer, kind, sample, row_path in zip(
            columns["writer"], columns["kind"], columns["sample"], columns["path"], strict=True
        )
    ]
    assignment = assign_splits(records, rules)
    splits = np.array([assignment[record.path] for record in records])
    classes = tuple(sorted(trained_writers(records, assignment)))
    index = {writer: position for position, writer in enumerate(classes)}
    claimed = np.array([index.get(str(writer), NO_CLASS) for writer in columns["writer"]])
    embedded_rows = columns["train_rows"]
    keep = splits[embedded_rows] == "train"
    if np.sum((splits == "train") & (columns["kind"] == GENUINE)) != np.sum(keep):
        raise ValueError(
            f"{path} has no views for some training images of this split: embed it with a split that "
            "trains on every writer (bench/embeddings.py does)"
        )
    views = {
        name.removeprefix("views_"): values[:, keep] for name, values in columns.items() if name.startswith("views_")
    }
    return EmbeddedSplit(
        clean=columns["clean"],
        views=views,
        train_rows=embedded_rows[keep],
        claimed=claimed,
        writers=columns["writer"],
        kinds=columns["kind"],
        splits=splits,
        paths=columns["path"],
        classes=classes,
        meta=json.loads(str(columns["meta"])),
    )


def training_set(data: EmbeddedSplit, augmentation: str, views: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean training embeddings and `views` augmented views of each (none for "none"), with labels."""
    samples = [data.clean[data.train_rows]]
    if augmentation != NO_AUGMENTATION:
        if augmentation not in data.views:
            raise ValueError(f"the embedding file has no {augmentation!r} views; it has {sorted(data.views)}")
        available = data.views[augmentation]
        if views > len(available):
            raise ValueError(f"{views} views of {augmentation!r} asked for, the embedding file has {len(available)}")
        samples.extend(available[:views])
    return np.concatenate(samples), np.tile(data.claimed[data.train_rows], len(samples))


def validation_set(data: EmbeddedSplit) -> tuple[np.ndarray, np.ndarray]:
    """The enrolled writers' validation genuine embeddings and labels (early stopping of Keras heads)."""
    rows = (data.splits == "val") & (data.kinds == GENUINE) & (data.claimed != NO_CLASS)
    return data.clean[rows], data.claimed[rows]


def scored_rows(data: EmbeddedSplit) -> np.ndarray:
    """Which rows a ScoreTable holds: those the evaluate stage scores (validation, test, calibration,
    unenrolled), in file order."""
    return np.isin(data.splits, SCORED_SPLITS)


def score_table(data: EmbeddedSplit, scorer: Scorer) -> ScoreTable:
    """The `scored_rows`, scored by `scorer`."""
    rows = scored_rows(data)
    identification, claims = scorer(data.clean[rows])
    return ScoreTable(
        np.asarray(identification, dtype=np.float64),
        np.asarray(claims, dtype=np.float64),
        data.clean[rows],
        data.claimed[rows],
        data.kinds[rows],
        data.splits[rows],
        data.paths[rows],
    )


def ridge_scorer(
    samples: np.ndarray, labels: np.ndarray, class_count: int, penalty: float, whitening: float = 0.0
) -> Scorer:
    """The pipeline's ridge head and verifier: one balanced ridge classifier per writer (`whitening`:
    `model.verifier_whitening`, 0 for off)."""
    from tasks.model.verifier import fit_writer_verifier

    verifier = fit_writer_verifier(samples, labels, class_count, penalty, whitening)

    def scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = verifier.scores(embeddings)
        return values, values

    return scores


def logistic_regression_scorer(samples: np.ndarray, labels: np.ndarray) -> Scorer:
    """StandardScaler + LogisticRegression: identification by its log-probabilities, claims by its probability."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(samples)
    model = LogisticRegression(max_iter=PEER_MAX_ITERATIONS).fit(scaler.transform(samples), labels)

    def scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = model.predict_proba(scaler.transform(embeddings))
        return np.log(np.maximum(probabilities, TINY_PROBABILITY)), probabilities

    return scores


def writer_svm_scorer(samples: np.ndarray, labels: np.ndarray, class_count: int) -> Scorer:
    """sigver's writer-dependent classifiers: per writer, a linear SVC with balanced class weights on
    its references against every other writer's (standardised embeddings); identification by the
    highest decision value."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(samples)
    standardised = scaler.transform(samples)
    models = [
        SVC(kernel="linear", C=SVM_PENALTY, class_weight="balanced").fit(standardised, labels == writer)
        for writer in range(class_count)
    ]

    def scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = scaler.transform(embeddings)
        values = np.stack([model.decision_function(rows) for model in models], axis=1)
        return values, values

    return scores


def keras_head_scorer(
    samples: np.ndarray,
    labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray],
    class_count: int,
    dense_units: int,
) -> tuple[Scorer, int]:
    """A Keras softmax head as the pipeline builds it (`tasks.model.keras_head.build_head`: standardised input,
    Dense(`dense_units`, relu) when above 0, dropout, softmax), Adam, batch 16, early stopping on
    validation loss (patience 10, best epoch kept); returns it and the epochs it ran."""
    import keras

    from tasks.model.keras_head import HeadSpec, build_head, embedding_statistics

    keras.utils.set_random_seed(KERAS_SEED)
    head = build_head(
        HeadSpec(class_count, dense_units, KERAS_DROPOUT, KERAS_SEED, *embedding_statistics(samples)), samples.shape[-1]
    )
    head.compile(keras.optimizers.Adam(KERAS_RATE), "sparse_categorical_crossentropy")
    history = head.fit(
        samples,
        labels,
        validation_data=validation,
        epochs=KERAS_EPOCHS,
        batch_size=KERAS_BATCH,
        callbacks=[keras.callbacks.EarlyStopping(patience=KERAS_PATIENCE, restore_best_weights=True)],
        verbose=0,
    )

    def scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities = np.asarray(head.predict(embeddings, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)
        return np.log(np.maximum(probabilities, TINY_PROBABILITY)), probabilities

    return scores, len(history.history["loss"])


def machine() -> str:
    """Where a bench ran, for its results file."""
    processor = platform.processor() or "cpu"
    return f"{platform.machine()}, {processor}, {platform.platform()}, Python {platform.python_version()}"
