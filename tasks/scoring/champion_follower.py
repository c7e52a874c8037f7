"""The model server follows its alias: a moved champion is verified and served without a restart.

A server started on `models:/<name>@<alias>` (the champion by default) polls the registry every
`--follow-seconds` (`DEFAULT_FOLLOW_SECONDS`; 0: never) in a background thread. When the alias names
another version, the thread loads it with the same checks as at start (`load_verified_model`: the
version's signature, the signed alias statement, every file's digest; read as data), off the request
path, then swaps it into the `ModelSlot`: requests in flight finish with the model they started with,
new ones get the new one, and every answer names its version. The replaced model is dropped once its
last request is answered, and no other version is loaded before that: at most two models in memory.

A version that fails verification is not served: the server keeps the one it has and logs one line
naming the version and why; it tries that version again only when its signature or the alias statement
changes (register ran again, or a poll fell between register's move of the alias and its signed
statement). A registry that cannot be read (tracking server down, alias deleted) is logged once per
outage, and serving goes on. A server started on an explicit version (`models:/<name>/<n>`) never moves.
"""

from __future__ import annotations

import gc
import logging
import re
import sys
import threading
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from tasks.workspace.errors import ModelFileError

if TYPE_CHECKING:
    from tasks.registration.model_store import LoadedModel
    from tasks.registration.signing import KeyFiles
    from tasks.scoring.model_slot import ModelSlot

LOGGER = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s champion follower: %(message)s"
DEFAULT_FOLLOW_SECONDS = 10.0  # `sigpipe serve --follow-seconds`, and `make up`'s model server
RELEASE_CHECK_SECONDS = 1.0  # how often a swap looks again whether the replaced model's last request ended
STOP_JOIN_SECONDS = 5.0  # how long a stopping server waits for a poll in progress (the thread is a daemon)
# `scheme://user:password@`: the credentials part of a URL an error message may quote.
URL_CREDENTIALS = re.compile(r"(\w+://)[^/\s@]+@")
HEALTH_TIMEOUT_SECONDS = 5.0  # a tracking server's health check before each poll (MLflow would retry for minutes)


class Outcome(Enum):
    """What one poll did."""

    SAME = "same"  # the alias names the version served
    SWAPPED = "swapped"  # another version was verified and is served now
    REFUSED = "refused"  # another version failed verification: the served one stays (logged once)
    UNREACHABLE = "unreachable"  # the registry could not be read: the served one stays (logged once per outage)


class AliasSource(Protocol):
    """Where the followed alias points: `version` raises when the registry cannot say."""

    def version(self) -> str:
        """The version number the alias names now."""
        ...

    def fingerprint(self, version: str) -> tuple[str, ...]:
        """What a verdict on `version` depends on: its signature and the alias statement."""
        ...


class RegistryAlias:
    """`models:/<name>@<alias>` read from an MLflow registry (a tracking server is health-checked first)."""

    def __init__(self, name: str, alias: str, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.name, self.alias, self.tracking_uri = name, alias, tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def version(self) -> str:
        """The version the alias names; a tracking server that fails its health check raises at once."""
        import requests

        from tasks.tracking.server import HEALTH_PATH, SERVER_SCHEMES

        if self.tracking_uri.startswith(SERVER_SCHEMES):
            health = self.tracking_uri.rstrip("/") + HEALTH_PATH
            requests.get(health, timeout=HEALTH_TIMEOUT_SECONDS).raise_for_status()
        return str(self.client.get_model_version_by_alias(self.name, self.alias).version)

    def fingerprint(self, version: str) -> tuple[str, ...]:
        """The version's signature tag and the registered model's alias statement signature."""
        from tasks.registration.signing import TAG_ALIASES_SIGNATURE, TAG_SIGNATURE

        statement = self.client.get_registered_model(self.name).tags.get(TAG_ALIASES_SIGNATURE, "")
        signature = self.client.get_model_version(self.name, version).tags.get(TAG_SIGNATURE, "")
        return version, signature, statement


def first_line(error: BaseException) -> str:
    """An error's first line, or its type's name when it has no message, with any credentials in a URL
    (`scheme://user:password@host`, as HTTP libraries print the request's URL) replaced by `***`."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return URL_CREDENTIALS.sub(r"\1***@", line)


def registry_unreachable(error: BaseException) -> bool:
    """Whether `error` says the registry could not be reached (MLflow losing its tracking server, a
    connection or timeout error), as opposed to a version that cannot be served."""
    from tasks.tracking.server import lost_server_reason

    return lost_server_reason(error) is not None or isinstance(error, ConnectionError | TimeoutError)


class ChampionFollower:
    """Polls `source` every `seconds` in a daemon thread and swaps verified versions into `slot`."""

    def __init__(
        self, slot: ModelSlot, model_uri: str, source: AliasSource, load: Callable[[], LoadedModel], seconds: float
    ) -> None:
        self.slot, self.model_uri, self.source, self.load, self.seconds = slot, model_uri, source, load, seconds
        self.refused: set[tuple[str, ...]] = set()  # fingerprints of versions refused, not tried again
        self.outage = False  # the registry could not be read at the last poll (logged when it began)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="champion-follower", daemon=True)

    def start(self) -> None:
        """Start polling (the first poll after `seconds`: the server has just loaded the alias's version)."""
        self.thread.start()

    def stop(self) -> None:
        """Stop polling; a load in progress is waited for a little, then left to the daemon thread."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(STOP_JOIN_SECONDS)

    def run(self) -> None:
        """Poll until stopped; a failure of a poll is logged and never ends the thread."""
        while not self.stopping.wait(self.seconds):
            try:
                self.poll()
            except Exception:
                LOGGER.exception("a poll of %s failed; still serving version %s", self.model_uri, self.served())

    def served(self) -> str:
        """The version served now."""
        return self.slot.current.version

    def poll(self) -> Outcome:
        """Look where the alias points once, and serve that version if it is another one and verifies."""
        try:
            version = self.source.version()
            fingerprint = None if version == self.served() else self.source.fingerprint(version)
        except Exception as error:
            return self.unreachable(error)
        self.reachable()
        if fingerprint is None:
            return Outcome.SAME
        if fingerprint in self.refused:
            return Outcome.REFUSED
        try:
            loaded = self.load()
        except ModelFileError as error:  # not signed, signed by another key, moved by hand, a file changed
            self.refused.add(fingerprint)
            LOGGER.warning(
                "%s now names version %s, which is refused, so version %s is still served: %s",
                self.model_uri,
                version,
                self.served(),
                first_line(error),
            )
            return Outcome.REFUSED
        except Exception as error:
            if registry_unreachable(error):  # the registry went away during the download
                return self.unreachable(error)
            # Signed but not servable (a Keras or TensorFlow error, memory): refused until it changes,
            # not retried on every poll as an outage would be.
            self.refused.add(fingerprint)
            LOGGER.warning(
                "%s now names version %s, which cannot be loaded (%s: %s), so version %s is still served",
                self.model_uri,
                version,
                type(error).__name__,
                first_line(error),
                self.served(),
            )
            return Outcome.REFUSED
        return self.swap_in(loaded)

    def swap_in(self, loaded: LoadedModel) -> Outcome:
        """Serve `loaded` from now on; drop the replaced model once its last request is answered."""
        if loaded.version == self.served():  # the alias moved back while the other version was loading
            return Outcome.SAME
        replaced = self.slot.swap(loaded)
        LOGGER.info("now serving %s version %s (was version %s)", loaded.name, loaded.version, replaced.version)
        while not self.slot.released(replaced, RELEASE_CHECK_SECONDS) and not self.stopping.is_set():
            pass  # requests that started with it are still being answered
        del replaced
        gc.collect()  # a Keras model holds reference cycles: free it now, before another one may load
        return Outcome.SWAPPED

    def unreachable(self, error: BaseException) -> Outcome:
        """Log the first failed read of an outage (later ones are silent until the registry answers)."""
        if not self.outage:
            self.outage = True
            LOGGER.warning(
                "cannot read %s (%s); still serving version %s and trying again every %g s",
                self.model_uri,
                first_line(error),
                self.served(),
                self.seconds,
            )
        return Outcome.UNREACHABLE

    def reachable(self) -> None:
        """The registry answered: an outage, if there was one, is over (logged)."""
        if self.outage:
            self.outage = False
            LOGGER.info("%s can be read again; serving version %s", self.model_uri, self.served())


def log_to_stderr() -> None:
    """The follower's lines on stderr (the server's log), timestamped, whatever the root logger does."""
    if not LOGGER.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        LOGGER.addHandler(handler)
        LOGGER.setLevel(logging.INFO)
        LOGGER.propagate = False


def champion_follower(
    slot: ModelSlot, model_uri: str, keys: KeyFiles, tracking_uri: str, seconds: float
) -> ChampionFollower | None:
    """A follower of `model_uri`'s alias every `seconds`, or None: 0 seconds, or an explicit version."""
    from functools import partial

    from tasks.registration.model_store import ALIAS_URI, load_verified_model

    match = ALIAS_URI.fullmatch(model_uri)
    if match is None or seconds <= 0:
        return None
    source = RegistryAlias(match["name"], match["alias"], tracking_uri)
    log_to_stderr()
    return ChampionFollower(slot, model_uri, source, partial(load_verified_model, model_uri, keys), seconds)
