"""Recognition quality: the pipeline's defaults against a simple peer on the same embeddings and split.

Runs the stage flows (download -> prepare -> train -> evaluate -> calibrate) with the project's
default parameters in a scratch workspace (only the dataset, the image size and the base's weights
are set), then, in the same process, the logistic-regression peer of issue 11 on the *same* cached
embeddings and split: the frozen base's global-average-pooled embeddings of the clean prepared
images, scikit-learn `StandardScaler` + `LogisticRegression(max_iter=2000)` fitted on the train and
validation genuine images; the score of the claim "W signed this" is the predicted probability of W.

Every number is on the test split; the pipeline's calibrated threshold was fitted on validation
genuine images and on the skilled forgeries of the calibration writers, which are not the test
writers. EERs marked a posteriori pick their threshold on the test scores themselves.

Usage:
  python bench/quality.py --dataset cedar --size 150
  python bench/quality.py --dataset cedar --size 299
  python bench/quality.py --dataset demo
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.cedar_pipeline import scratch_workspace  # noqa: E402

DEFAULT_CEDAR = PROJECT_ROOT.parent / "shared" / "datasets" / "cedar"
PEER_MAX_ITERATIONS = 2000


def dataset_changes(dataset: str, cedar: Path, size: int, weights: str) -> dict[str, dict[str, object]]:
    """The only parameters the benchmark sets: where the data is, the image size, the base's weights."""
    changes: dict[str, dict[str, object]] = {
        "prepare": {"image_size": size},
        "model": {"weights": weights},
        "tracking": {"log_model": False},
    }
    if dataset == "cedar":
        changes["data"] = {"source": "local", "layout": "cedar", "path": str(cedar.resolve())}
    return changes


def run_stages(params_file: str) -> dict[str, float]:
    """Run the five stage flows in order; returns the seconds each took."""
    from flows.calibrate import calibrate_flow
    from flows.download import download_flow
    from flows.evaluate import evaluate_flow
    from flows.prepare import prepare_flow
    from flows.train import train_flow

    timings = {}
    for name, stage in (
        ("download", download_flow),
        ("prepare", prepare_flow),
        ("train", train_flow),
        ("evaluate", evaluate_flow),
        ("calibrate", calibrate_flow),
    ):
        started = time.perf_counter()
        stage(params_file)
        timings[name] = round(time.perf_counter() - started, 1)
    return timings


def cached_train_embeddings(features_dir: Path) -> np.ndarray:
    """The clean training images' embeddings (view 0) from the train stage's feature cache."""
    caches = sorted(features_dir.glob("*.npz"))
    if len(caches) != 1:
        raise RuntimeError(f"expected one feature cache in {features_dir}, found {len(caches)}")
    with np.load(caches[0]) as arrays:
        return arrays["train_views"][0]


def peer_metrics(root: Path) -> dict[str, float]:
    """The logistic-regression peer on the pipeline's own embeddings and split, measured like the pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    from tasks.input_pipeline import load_training_data
    from tasks.manifest import read_manifest
    from tasks.metrics import equal_error_rate
    from tasks.paths import ProjectPaths
    from tasks.scores import claimed_scores, load_scores, random_forgery_scores

    paths = ProjectPaths.from_root(root)
    data = load_training_data(read_manifest(paths.manifest_file), paths.root)
    table = load_scores(paths.scores_file)
    validation = table.select("val", "genuine")
    features = np.concatenate([cached_train_embeddings(paths.features_dir), validation.embeddings])
    labels = np.concatenate([data.train.labels, validation.claimed])
    scaler = StandardScaler().fit(features)
    peer = LogisticRegression(max_iter=PEER_MAX_ITERATIONS).fit(scaler.transform(features), labels)

    def probabilities(rows) -> np.ndarray:
        return peer.predict_proba(scaler.transform(rows.embeddings))

    genuine = table.select("test", "genuine")
    genuine_probabilities = probabilities(genuine)
    predictions = np.argmax(genuine_probabilities, axis=1)
    genuine_claims = claimed_scores(genuine_probabilities, genuine.claimed)
    skilled = table.select("test", "skilled")
    metrics = {
        "accuracy": float(np.mean(predictions == genuine.claimed)),
        "f1_weighted": float(f1_score(genuine.claimed, predictions, average="weighted", zero_division=0)),
        "eer_random": equal_error_rate(
            genuine_claims, random_forgery_scores(genuine_probabilities, genuine.claimed)
        ).eer,
        "eer_skilled": float("nan"),
    }
    if len(skilled):
        metrics["eer_skilled"] = equal_error_rate(
            genuine_claims, claimed_scores(probabilities(skilled), skilled.claimed)
        ).eer
    return metrics


def pipeline_metrics(root: Path) -> dict[str, object]:
    """The pipeline's own numbers from its metrics files."""
    evaluate = json.loads((root / "metrics" / "evaluate_details.json").read_text())
    calibrate = json.loads((root / "metrics" / "calibrate_details.json").read_text())
    train = json.loads((root / "metrics" / "train.json").read_text())
    prepare = json.loads((root / "metrics" / "prepare.json").read_text())
    return {
        "accuracy": evaluate["accuracy"],
        "f1_weighted": evaluate["f1_weighted"],
        "eer_skilled": evaluate["eer_skilled"],
        "eer_random": evaluate["eer_random"],
        "softmax_eer_skilled": evaluate["softmax_eer_skilled"],
        "threshold": calibrate["threshold"],
        "objective": calibrate["objective"],
        "threshold_fitted_on": calibrate["threshold_fitted_on"],
        "frr": calibrate["frr"],
        "far_skilled": calibrate["far_skilled"],
        "far_random": calibrate["far_random"],
        "open_set": calibrate["open_set"],
        "epochs_run": train["epochs_run"],
        "best_epoch": train["best_epoch"],
        "prepare": prepare,
    }


def number(value: object, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def table_rows(label: str, ours: dict, peer: dict) -> str:
    """Two markdown rows (pipeline, peer) for bench/README.md."""
    return "\n".join(
        [
            f"| {label} | pipeline defaults | {number(ours['accuracy'])} | {number(ours['f1_weighted'])} | "
            f"{number(ours['eer_skilled'])} | {number(ours['eer_random'], 4)} | {number(ours['frr'])} | "
            f"{number(ours['far_skilled'])} | {number(ours['far_random'], 4)} |",
            f"| {label} | logistic-regression peer | {number(peer['accuracy'])} | {number(peer['f1_weighted'])} | "
            f"{number(peer['eer_skilled'])} | {number(peer['eer_random'], 4)} | - | - | - |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("cedar", "demo"), default="cedar")
    parser.add_argument("--cedar", type=Path, default=DEFAULT_CEDAR)
    parser.add_argument("--size", type=int, default=150)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--output", type=Path, default=None)
    arguments = parser.parse_args()
    output = (
        arguments.output or PROJECT_ROOT / "bench" / "results" / f"quality_{arguments.dataset}_{arguments.size}.json"
    )

    from flows._stage import quiet_environment

    quiet_environment()
    changes = dataset_changes(arguments.dataset, arguments.cedar, arguments.size, arguments.weights)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        params_file = scratch_workspace(Path(scratch), changes)
        timings = run_stages(str(params_file))
        ours = pipeline_metrics(Path(scratch))
        peer = peer_metrics(Path(scratch))
    label = f"{arguments.dataset} {arguments.size} px"
    summary = {
        "dataset": arguments.dataset,
        "size": arguments.size,
        "weights": arguments.weights,
        "settings": changes,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
        "stage_seconds": timings,
        "total_seconds": round(time.perf_counter() - started, 1),
        "pipeline": ours,
        "peer": peer,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(
        "| data | model | accuracy | weighted F1 | skilled EER (a posteriori) | random EER | FRR at calibrated "
        "threshold | skilled FAR | random FAR |\n|---|---|---|---|---|---|---|---|---|"
    )
    print(table_rows(label, ours, peer))
    print(
        f"\nsoftmax-probability score of the same classifier: skilled EER {number(ours['softmax_eer_skilled'])}; "
        f"open set at the threshold: {ours['open_set']}; epochs {ours['epochs_run']} (best {ours['best_epoch']}); "
        f"stage seconds {timings}"
    )


if __name__ == "__main__":
    main()
