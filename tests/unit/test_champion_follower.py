"""The champion follower's decisions, one poll at a time: swap, keep a request's model, refuse, outage.

The registry and the loader are plain functions here (what the alias names, what loading a version
gives or raises); tests/integration/test_champion_following.py runs the same against a real server
process and MLflow store.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from dataclasses import dataclass, field

import pytest

from tasks.registration.model_store import LoadedModel
from tasks.scoring.champion_follower import ChampionFollower, Outcome, champion_follower
from tasks.scoring.model_slot import ModelSlot
from tasks.workspace.errors import UntrustedModelError

NAME = "followed"
URI = f"models:/{NAME}@champion"
POLL_SECONDS = 1.0
JOIN_SECONDS = 10.0


class FakeModel:
    """Stands for a SignatureClassifier: only its identity and lifetime matter here."""


@dataclass
class Registry:
    """Where the alias points, and what loading it gives: a version, an error, or a refusal."""

    version_now: str = "1"
    signature: str = "signed"
    unreachable: Exception | None = None
    refusal: Exception | None = None
    loads: list[str] = field(default_factory=list)

    def version(self) -> str:
        if self.unreachable is not None:
            raise self.unreachable
        return self.version_now

    def fingerprint(self, version: str) -> tuple[str, ...]:
        return version, self.signature

    def load(self) -> LoadedModel:
        self.loads.append(self.version_now)
        if self.refusal is not None:
            raise self.refusal
        return loaded(self.version_now)


def loaded(version: str) -> LoadedModel:
    return LoadedModel(FakeModel(), NAME, version)  # type: ignore[arg-type]


def follower_of(registry: Registry) -> ChampionFollower:
    return ChampionFollower(ModelSlot(loaded("1")), URI, registry, registry.load, POLL_SECONDS)


def follower_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.endswith("champion_follower")]


def test_a_moved_alias_is_loaded_and_swapped_in(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    registry = Registry()
    follower = follower_of(registry)
    assert follower.poll() is Outcome.SAME and registry.loads == []
    registry.version_now = "2"
    assert follower.poll() is Outcome.SWAPPED
    assert follower.slot.current.version == "2"
    assert follower_lines(caplog) == [f"now serving {NAME} version 2 (was version 1)"]


def test_a_request_in_flight_keeps_its_model_and_the_old_one_is_dropped_after_it() -> None:
    """The swap waits for the replaced model's last request before it drops it (and before any other load)."""
    registry = Registry(version_now="2")
    follower = follower_of(registry)
    with follower.slot.borrowed() as in_flight:
        old = weakref.ref(in_flight.model)
        polling = threading.Thread(target=follower.poll)
        polling.start()
        for _ in range(int(JOIN_SECONDS / (POLL_SECONDS / 10))):
            if follower.slot.current.version == "2":
                break
            polling.join(POLL_SECONDS / 10)
        with follower.slot.borrowed() as new_request:
            assert (in_flight.version, new_request.version) == ("1", "2")
        assert polling.is_alive()  # still waiting for the request that started with version 1
    del in_flight, new_request
    polling.join(JOIN_SECONDS)
    assert not polling.is_alive()
    gc.collect()
    assert old() is None  # version 1 is no longer in memory


def test_a_refused_version_is_logged_once_and_tried_again_only_when_its_signature_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry(version_now="3", refusal=UntrustedModelError("followed version 3 is not signed"))
    follower = follower_of(registry)
    assert [follower.poll() for _ in range(3)] == [Outcome.REFUSED] * 3
    assert registry.loads == ["3"] and follower.slot.current.version == "1"
    (line,) = follower_lines(caplog)
    assert "names version 3, which is refused, so version 1 is still served" in line and "not signed" in line
    registry.signature, registry.refusal = "signed again by register", None
    assert follower.poll() is Outcome.SWAPPED and follower.slot.current.version == "3"


def test_an_unreachable_registry_is_logged_once_per_outage_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    registry = Registry(unreachable=ConnectionError("connection refused"))
    follower = follower_of(registry)
    assert [follower.poll() for _ in range(3)] == [Outcome.UNREACHABLE] * 3
    registry.unreachable = None
    assert follower.poll() is Outcome.SAME
    registry.unreachable = ConnectionError("refused again")
    assert follower.poll() is Outcome.UNREACHABLE
    lines = follower_lines(caplog)
    assert len(lines) == 3, lines
    assert "cannot read" in lines[0] and "connection refused" in lines[0] and "still serving version 1" in lines[0]
    assert "can be read again" in lines[1] and "refused again" in lines[2]
    assert follower.slot.current.version == "1"


def test_a_signed_version_that_fails_to_load_is_refused_not_retried_as_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A version that verifies but cannot be built (a Keras error, memory) is refused until it changes:
    one line, one load, no "cannot read" outage lines on every poll."""
    caplog.set_level(logging.INFO)
    registry = Registry(version_now="4", refusal=ValueError("No such layer: embedding"))
    follower = follower_of(registry)
    assert [follower.poll() for _ in range(3)] == [Outcome.REFUSED] * 3
    assert registry.loads == ["4"] and follower.slot.current.version == "1"
    (line,) = follower_lines(caplog)
    assert "version 4, which cannot be loaded (ValueError: No such layer" in line


def test_credentials_in_an_error_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    secret = "s3cret-passw0rd"
    error = ConnectionError(
        f"HTTPConnectionPool: Max retries exceeded with url: http://sigpipe:{secret}@127.0.0.1:5000/api"
    )
    follower = follower_of(Registry(unreachable=error))
    assert follower.poll() is Outcome.UNREACHABLE
    (line,) = follower_lines(caplog)
    assert secret not in line and "http://***@127.0.0.1:5000" in line


def test_the_thread_polls_until_stopped() -> None:
    registry = Registry(version_now="2")
    follower = ChampionFollower(ModelSlot(loaded("1")), URI, registry, registry.load, POLL_SECONDS / 10)
    follower.start()
    try:
        for _ in range(100):
            if follower.slot.current.version == "2":
                break
            follower.stopping.wait(POLL_SECONDS / 10)
    finally:
        follower.stop()
    assert follower.slot.current.version == "2" and not follower.thread.is_alive()


@pytest.mark.parametrize(("uri", "seconds"), [(f"models:/{NAME}/1", POLL_SECONDS), (URI, 0.0)])
def test_an_explicit_version_or_zero_seconds_is_not_followed(uri: str, seconds: float) -> None:
    assert champion_follower(ModelSlot(loaded("1")), uri, None, "sqlite:///unused.db", seconds) is None  # type: ignore[arg-type]
