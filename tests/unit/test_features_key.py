"""The cached embeddings' key changes with every input they depend on (images, augmentation, views,
seed, base weights, precision, the code that computes them, library versions), and only with those."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from tasks.config import AugmentParams
from tasks.features import EMBEDDING_MODULES, code_digest, embedding_code_digest, features_key, library_versions
from tasks.input_pipeline import SplitImages, TrainingData
from tests.conftest import PROJECT_ROOT

AUGMENT = AugmentParams.model_validate(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["augment"])
VERSIONS = {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6"}


def data(train_hashes: tuple[str, ...] = ("a", "b")) -> TrainingData:
    def split(hashes: tuple[str, ...]) -> SplitImages:
        return SplitImages(np.zeros((len(hashes), 75, 75, 1), np.uint8), np.zeros(len(hashes), np.int32), hashes)

    return TrainingData(("w1", "w2"), split(train_hashes), split(("c",)), 75)


def key(**changes: object) -> str:
    arguments: dict[str, object] = {
        "data": data(),
        "augment": AUGMENT,
        "views": 4,
        "seed": 42,
        "base_digest": "base",
        "compute_dtype": "float32",
        "code": "code",
        "versions": VERSIONS,
    }
    return features_key(**{**arguments, **changes})  # type: ignore[arg-type]


def test_key_depends_on_every_input_of_the_embeddings() -> None:
    reference = key()
    assert key() == reference
    variants = [
        key(data=data(("a", "x"))),
        key(augment=AUGMENT.model_copy(update={"zoom": 0.1})),
        key(augment=AUGMENT.model_copy(update={"horizontal_flip": True})),
        key(augment=AugmentParams(preset="reference")),
        key(views=3),
        key(seed=43),
        key(base_digest="other base weights"),
        key(compute_dtype="bfloat16"),
        key(code="edited augment.py"),
        key(versions={**VERSIONS, "tensorflow": "2.22.0"}),
        key(versions={**VERSIONS, "keras": "3.16.0"}),
    ]
    assert reference not in variants
    assert len(set(variants)) == len(variants)


def test_code_digest_changes_with_any_file_content(tmp_path: Path) -> None:
    first, second = tmp_path / "augment.py", tmp_path / "model.py"
    first.write_text("ROTATION = 2\n")
    second.write_text("SIZE = 75\n")
    reference = code_digest([first, second])
    assert code_digest([second, first]) == reference  # order of listing does not matter
    first.write_text("ROTATION = 3\n")
    assert code_digest([first, second]) != reference


def test_the_embedding_code_is_the_modules_that_compute_embeddings() -> None:
    """Every listed module exists (a rename would otherwise drop it from the key silently), and
    the real digest and versions are what the key is built from."""
    folder = PROJECT_ROOT / "tasks"
    assert all((folder / name).is_file() for name in EMBEDDING_MODULES)
    assert {"augment.py", "model.py", "fused.py", "input_pipeline.py", "features.py"} <= set(EMBEDDING_MODULES)
    assert embedding_code_digest() == code_digest(folder / name for name in EMBEDDING_MODULES)
    assert set(library_versions()) == {"tensorflow", "keras", "numpy"}
