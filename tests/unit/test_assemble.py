"""Registration builds the packaged classifier from the base and the trained head's arrays, and refuses
to package one that does not score as the light stages did (another base, a head out of step with the
embeddings), naming the image and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.evaluation.scores import ScoreTable
from tasks.model.classifier import LogitScorer, build_base, weights_digest
from tasks.model.embedding_spec import EmbeddingSpec
from tasks.model.head import head_from_verifier
from tasks.model.verifier import WriterVerifier
from tasks.registration.assemble import SCORE_TOLERANCE, assemble_classifier, check_scores
from tasks.workspace.errors import ModelFileError

SIZE = 75
SEED = 3
EMBEDDING = EmbeddingSpec("bright", ("mixed2", "mixed5", "mixed7", "mixed10"))
FEATURES = 3872  # 288 + 768 + 768 + 2048 channels


@pytest.fixture(scope="module")
def verifier() -> WriterVerifier:
    rng = np.random.default_rng(1)
    return WriterVerifier(
        mean=rng.normal(0, 0.01, FEATURES),
        scale=rng.uniform(0.5, 2.0, FEATURES),
        kernel=rng.normal(0, 0.1, (FEATURES, 3)),
        bias=rng.normal(0, 1, 3),
    )


def embed_record(digest: str, embedding: EmbeddingSpec = EMBEDDING) -> dict[str, object]:
    """What the embed stage records in metrics/embed.json about its base and embedding."""
    return {"base_weights_sha256": digest, "embedding": embedding.as_dict()}


def validation_images(root: Path, count: int) -> list[dict[str, str]]:
    """`count` prepared grey images on disk and their manifest rows."""
    rng = np.random.default_rng(2)
    rows = []
    for index in range(count):
        name = f"prepared/{index}.png"
        (root / "prepared").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)).save(root / name)
        rows.append({"path": f"raw/{index}.tif", "prepared_path": name, "split": "val"})
    return rows


def score_table(classifier, verifier: WriterVerifier, rows: list[dict[str, str]], root: Path) -> ScoreTable:
    """The table the evaluate stage would hold for `rows`: the head's logits and the verifier's scores."""
    grey = np.stack([np.asarray(Image.open(root / row["prepared_path"])) for row in rows])
    outputs = LogitScorer(classifier).of_grey(grey)
    return ScoreTable(
        logits=outputs.logits.astype(np.float32),
        verification=verifier.scores(outputs.embeddings),
        embeddings=outputs.embeddings,
        claimed=np.zeros(len(rows), dtype=np.int64),
        kinds=np.array(["genuine"] * len(rows)),
        splits=np.array([row["split"] for row in rows]),
        paths=np.array([row["path"] for row in rows]),
    )


def test_the_packaged_model_is_checked_against_the_light_stages_scores(
    verifier: WriterVerifier, tmp_path: Path
) -> None:
    embedded = embed_record(weights_digest(build_base(SIZE, "none", tmp_path, SEED)))
    classifier = assemble_classifier(
        tmp_path, SIZE, "none", SEED, head_from_verifier(verifier), 0.1, embedded, EMBEDDING
    )
    rows = validation_images(tmp_path, 3)
    table = score_table(classifier, verifier, rows, tmp_path)
    assert check_scores(LogitScorer(classifier), verifier, table, rows, tmp_path) <= SCORE_TOLERANCE
    # A head (or embeddings) out of step with what evaluate scored: refused, naming the image.
    table.logits[1, 2] += 10 * SCORE_TOLERANCE
    with pytest.raises(ModelFileError, match=r"scores raw/1\.tif .* away from the evaluate stage's scores.*dvc repro"):
        check_scores(LogitScorer(classifier), verifier, table, rows, tmp_path)


def test_a_base_other_than_the_one_that_embedded_is_refused(verifier: WriterVerifier, tmp_path: Path) -> None:
    other = weights_digest(build_base(SIZE, "none", tmp_path, SEED + 1))  # another seed: another random base
    with pytest.raises(ModelFileError, match=r"not the one that computed the embeddings"):
        assemble_classifier(
            tmp_path, SIZE, "none", SEED, head_from_verifier(verifier), 0.1, embed_record(other), EMBEDDING
        )


def test_an_embedding_other_than_the_stored_one_is_refused(verifier: WriterVerifier, tmp_path: Path) -> None:
    """model.ink or model.pooled_layers changed since the embed stage ran: the head fits other features."""
    digest = weights_digest(build_base(SIZE, "none", tmp_path, SEED))
    dark = EmbeddingSpec("dark", EMBEDDING.pooled_layers)
    with pytest.raises(ModelFileError, match=r"model.ink / model.pooled_layers .* Run `dvc repro`"):
        assemble_classifier(
            tmp_path, SIZE, "none", SEED, head_from_verifier(verifier), 0.1, embed_record(digest, dark), EMBEDDING
        )


def test_the_serving_code_answers_a_raw_image_as_evaluate_scored_it(verifier: WriterVerifier, tmp_path: Path) -> None:
    """package runs one validation image's raw file through the serving code (decode, preprocess, score,
    answer) with the packaged model: a serving path that disagrees with the stages is refused before
    anything can be registered (register no longer runs the model)."""
    from PIL import ImageDraw

    from tasks.data.images import PreprocessSettings, preprocess_file, save_grey_png
    from tasks.registration.assemble import check_serving_path

    settings = PreprocessSettings(SIZE, 600, 1.5, 10, 0.5, 8, 0.05)
    raw = tmp_path / "raw" / "0.png"
    raw.parent.mkdir()
    scan = Image.new("L", (240, 120), 245)
    ImageDraw.Draw(scan).line([(20, 80), (80, 20), (140, 100), (220, 30)], fill=15, width=6)
    scan.save(raw)
    (tmp_path / "prepared").mkdir()
    save_grey_png(preprocess_file(raw, settings).image, tmp_path / "prepared" / "0.png")
    rows = [{"path": "raw/0.png", "prepared_path": "prepared/0.png", "split": "val"}]
    embedded = embed_record(weights_digest(build_base(SIZE, "none", tmp_path, SEED)))
    classifier = assemble_classifier(
        tmp_path, SIZE, "none", SEED, head_from_verifier(verifier), 0.1, embedded, EMBEDDING
    )
    table = score_table(classifier, verifier, rows, tmp_path)
    classes = ["a", "b", "c"]
    scorer = LogitScorer(classifier)
    check_scores(scorer, verifier, table, rows, tmp_path)
    check_serving_path(scorer, verifier, table, tmp_path, classes, settings)
    # package's two checks run one traced graph: the serving path reuses the scorer check_scores traced.
    assert scorer.forward_grey.experimental_get_tracing_count() == 1
    top = int(np.argmax(table.logits[0]))
    table.verification[0, top] += 10 * SCORE_TOLERANCE  # the stages scored something else
    with pytest.raises(ModelFileError, match=r"serving code answers raw/0\.png .* evaluate scored it writer"):
        check_serving_path(scorer, verifier, table, tmp_path, classes, settings)
