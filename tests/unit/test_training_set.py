"""The enrolment's training set (tasks.enrolment.training_set): which views are background (dataset images)
and which are enrolled references, how they reach the verifier, and one writer solved alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.enrolment.training_set import TrainingSet, fit, fit_with_writer, fit_without_writer, flat_problem, remember
from tasks.workspace.errors import EnrolmentError
from tasks.workspace.params_model import ModelParams
from tasks.workspace.paths import ProjectPaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VIEWS, FEATURES = 2, 40


def writer_views(seed: int, images: int) -> np.ndarray:
    """(VIEWS, images, FEATURES) embeddings around a writer's own centre."""
    generator = np.random.default_rng(seed)
    return (generator.normal(0, 2, FEATURES) + generator.normal(0, 1, (VIEWS, images, FEATURES))).astype(np.float32)


def dataset(writers: int = 3, images: int = 6) -> TrainingSet:
    """A record of dataset writers only: every view in the background."""
    names = [f"{index:03d}" for index in range(1, writers + 1)]
    return TrainingSet(
        {name: writer_views(index, images) for index, name in enumerate(names)},
        {name: np.ones(images, dtype=bool) for name in names},
    )


def model_params() -> ModelParams:
    """params.yaml's model group, unwhitened (an enrolment then solves one writer alone)."""
    defaults = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["model"]
    return ModelParams.model_validate({**defaults, "verifier_regularization": 0.01, "verifier_whitening": 0.0})


def test_enrolled_views_are_never_background() -> None:
    record = dataset()
    enlarged = record.with_writer("900", writer_views(9, 4)).with_writer("001", writer_views(10, 2))
    assert enlarged.classes == ("001", "002", "003", "900")
    assert enlarged.background["900"].tolist() == [False] * 4
    assert enlarged.background["001"].tolist() == [True] * 6 + [False] * 2  # references added to a dataset writer
    assert enlarged.views["001"].shape == (VIEWS, 8, FEATURES)
    assert enlarged.without("900").classes == ("001", "002", "003")
    assert "900" not in enlarged.without("900").background
    samples, labels, background = flat_problem(enlarged)
    assert samples.shape == (VIEWS * 24, FEATURES)
    # View-major, as flat_views orders the samples: each view repeats the images' labels and flags.
    np.testing.assert_array_equal(labels[:24], labels[24:])
    np.testing.assert_array_equal(background[:24], background[24:])
    assert background[:24].tolist() == [True] * 6 + [False] * 2 + [True] * 12 + [False] * 4
    np.testing.assert_array_equal(samples[30], enlarged.views["001"][1, 6])  # view 1 of 001's first reference


def test_one_dataset_writer_left_is_refused_in_one_line() -> None:
    record = dataset(writers=2).with_writer("900", writer_views(9, 4))
    with pytest.raises(EnrolmentError, match=r"1 dataset writer\(s\) would be left \(002\)"):
        fit(record.without("001"), model_params())


def test_an_enrolled_writer_solved_alone_equals_the_whole_fit_and_keeps_the_others() -> None:
    record = dataset(writers=4)
    before = fit(record, model_params())
    enlarged = record.with_writer("900", writer_views(9, 5))
    alone, whole = fit_with_writer(before, enlarged, "900", model_params()), fit(enlarged, model_params())
    np.testing.assert_array_equal(alone.kernel[:, :4], before.kernel)  # the others' models, kept as they were
    np.testing.assert_allclose(alone.kernel, whole.kernel, rtol=1e-8, atol=1e-10 * np.abs(whole.kernel).max())
    np.testing.assert_allclose(alone.bias, whole.bias, rtol=1e-8, atol=1e-12)


def test_removing_an_enrolled_writer_takes_its_model_out_of_the_kept_verifier(tmp_path: Path) -> None:
    """Exact and without a solve for an enrolled writer; a dataset writer's removal solves again without its
    signatures in the background; with nothing kept, the record is solved first."""
    paths = ProjectPaths.from_root(tmp_path)
    paths.verifier_cache_file.parent.mkdir(parents=True)
    record = dataset(writers=4)
    enlarged = record.with_writer("900", writer_views(9, 5))
    unkept = fit_without_writer(paths, enlarged, "900", model_params())  # nothing kept yet: solved
    kept = fit(enlarged, model_params())
    remember(paths, enlarged, model_params(), kept)
    removed = fit_without_writer(paths, enlarged, "900", model_params())
    np.testing.assert_array_equal(removed.kernel, kept.kernel[:, :4])
    np.testing.assert_array_equal(removed.bias, kept.bias[:4])
    np.testing.assert_allclose(removed.kernel, unkept.kernel, rtol=1e-8, atol=1e-10 * np.abs(unkept.kernel).max())
    dataset_writer = fit_without_writer(paths, enlarged, "002", model_params())
    solved = fit(enlarged.without("002"), model_params())
    np.testing.assert_array_equal(dataset_writer.kernel, solved.kernel)
    assert not np.allclose(dataset_writer.kernel[:, 0], kept.kernel[:, 0])  # 002 no longer a negative of 001
