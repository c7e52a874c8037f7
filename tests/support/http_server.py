"""A small local HTTP server for tests: in-memory files, Range requests and scripted failures.

It binds to 127.0.0.1 on a free port, serves in a daemon thread, and is used as a context manager:

    with LocalHTTPServer({"/data.zip": payload}) as server:
        server.cut("/data.zip", times=1, after_bytes=1000)
        download(server.url("/data.zip"))
        assert server.requests_for("/data.zip")[1].range == "bytes=1000-"

Per path it can: answer Range requests (206 with Content-Range, 416 past the end), cut the
connection mid-body, ignore Range and always answer 200, or answer 5xx a number of times first.
Unknown paths get 404. Every request's path and Range header is recorded.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import cast

HOST = "127.0.0.1"
RANGE_PATTERN = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None


@dataclass
class Cut:
    """Cut the next `times` responses of a path after `after_bytes` bytes of body."""

    times: int
    after_bytes: int


@dataclass
class Failure:
    """Answer the next `times` requests of a path with HTTP `status`."""

    times: int
    status: int


class _Server(ThreadingHTTPServer):
    """The socket server; holds a reference to the state shared with the handlers."""

    daemon_threads = True
    owner: LocalHTTPServer


class _Handler(BaseHTTPRequestHandler):
    """Serves the owner's files according to the behaviours configured for each path."""

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def do_GET(self) -> None:
        owner = cast(_Server, self.server).owner
        path = self.path.split("?", 1)[0]
        range_header = self.headers.get("Range")
        owner.record(RecordedRequest("GET", path, range_header))
        body = owner.files.get(path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        status = owner.take_failure(path)
        if status is not None:
            self.send_error(status)
            return
        start, end = 0, len(body)
        code = 200
        if range_header is not None and path not in owner.ignore_range_paths:
            parsed = parse_range(range_header, len(body))
            if parsed == "unsatisfiable":
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if parsed is not None:
                start, end = parsed
                code = 206
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "none" if path in owner.ignore_range_paths else "bytes")
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        self.end_headers()
        cut_after = owner.take_cut(path)
        if cut_after is None:
            self.wfile.write(body[start:end])
            return
        # Promise the whole body in Content-Length, send part of it, then hang up.
        self.wfile.write(body[start : min(end, start + cut_after)])
        self.wfile.flush()
        self.close_connection = True


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """A single `bytes=` range as a half-open (start, end) pair; "unsatisfiable"; None when unusable."""
    match = RANGE_PATTERN.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # Suffix range: the last N bytes.
        length = int(last)
        return "unsatisfiable" if length == 0 or size == 0 else (max(0, size - length), size)
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = size if last == "" else min(size, int(last) + 1)
    return None if end <= start else (start, end)


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 serving `files` (URL path -> bytes); a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.ignore_range_paths: set[str] = set()
        self.requests: list[RecordedRequest] = []
        self._cuts: dict[str, Cut] = {}
        self._failures: dict[str, Failure] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalHTTPServer:
        self._server = _Server((HOST, 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHTTPServer", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        """The port the server listens on (only while it runs)."""
        if self._server is None:
            raise RuntimeError("the server is not running; use it in a `with` block")
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        """The http://127.0.0.1:<port><path> address of `path`."""
        return f"http://{HOST}:{self.port}{path}"

    def cut(self, path: str, times: int, after_bytes: int) -> None:
        """Make the next `times` responses for `path` stop after `after_bytes` bytes of body and close."""
        with self._lock:
            self._cuts[path] = Cut(times, after_bytes)

    def ignore_range(self, path: str) -> None:
        """Make `path` ignore Range headers and always answer 200 with the whole file."""
        self.ignore_range_paths.add(path)

    def fail(self, path: str, times: int, status: int = 503) -> None:
        """Make the next `times` requests for `path` answer HTTP `status` (a 5xx by default)."""
        with self._lock:
            self._failures[path] = Failure(times, status)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        """The requests made for `path`, in order."""
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def record(self, request: RecordedRequest) -> None:
        """Remember a request (called by the handler)."""
        with self._lock:
            self.requests.append(request)

    def take_failure(self, path: str) -> int | None:
        """The status to fail this request of `path` with, if any are left (called by the handler)."""
        with self._lock:
            failure = self._failures.get(path)
            if failure is None or failure.times <= 0:
                return None
            failure.times -= 1
            return failure.status

    def take_cut(self, path: str) -> int | None:
        """How many body bytes to send before cutting this response of `path`, if any (called by the handler)."""
        with self._lock:
            cut = self._cuts.get(path)
            if cut is None or cut.times <= 0:
                return None
            cut.times -= 1
            return cut.after_bytes
