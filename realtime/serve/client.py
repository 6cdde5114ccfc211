"""The room side of `endofuse serve`: send preprocessed frames, keep the newest mask, never hold the video.

    engine = open_engine(server="http://gpu-box:8000", token="...", deadline_ms=100, fallback="local")
    segment_pair(engine, wli, nbi)                 # one blocking round trip (the Engine interface)
    logits, frame = engine.infer_latest(wli, nbi)  # what the live pipeline calls: never waits

`RoomClient` keeps at most `max_in_flight` requests on the wire (default 1: a second one doubles the
load on a busy server and makes every room's masks older, benchmarks/rooms.py); a newer frame replaces
one still waiting to be sent (newest wins). `infer_latest` answers at once with the newest mask that came back, if it is
not older than the deadline. A refused connection or a silent server (no answer in `timeout_s`) makes the
room offline: frames flow without a mask ("AI OFFLINE" in the HUD), and the next frame after a back-off
(doubling up to `backoff_max_s`) probes the server. With a fallback engine, offline frames are segmented
locally until the server answers again.

A room may start while its server is down: it then assumes the input size and classes of its local model
and starts offline. Whenever the room comes back from offline (and at its first answer after such a start),
its probe first asks /health and uses the server only when its input size and class count are the ones
the room assumed; otherwise (or when the server refuses the token) the room stays offline, says why in
one line on stderr, counts it and keeps probing.
"""
from __future__ import annotations

import http.client
import json
import sys
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from endofuse.errors import EndofuseError, InvalidOptionError
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.serve.pacing import REQUEST_EVERY, RequestPacer
from endofuse.realtime.serve.wire import (
    BATCH_SIZE,
    COMPUTE_MS,
    DEFAULT_WIRE_DTYPE,
    HEALTH_ROUTE,
    NODE,
    QUEUE_MS,
    RECEIVE_MS,
    SEGMENT_ROUTE,
    WIRE_DTYPES,
    decode_response,
    encode_request,
)
from endofuse.realtime.tracing import now, percentiles

CONNECTED, LATE, OFFLINE, FALLBACK = "connected", "late", "offline", "fallback"
AI_OFFLINE, AI_LATE = "AI OFFLINE", "AI LATE"  # HUD modes of a frame drawn without a mask
DEFAULT_DEADLINE_MS = 100.0


class ServerUnavailable(EndofuseError):
    """The server could not be reached or did not answer (one line naming the URL); `reason` says how."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class RequestRefused(EndofuseError):
    """The server answered a request with an error status (its one-line reason is the message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Answer:
    """The newest mask that came back: logits and which frame (submission index) it belongs to."""

    logits: np.ndarray
    index: int
    sent: float
    received: float


@dataclass
class RemoteFrame:
    """What `infer_latest` tells the pipeline about one frame: where its mask came from and how old it is."""

    state: str  # CONNECTED, LATE, OFFLINE or FALLBACK
    source: str | None  # "server", "local" or None (no mask)
    age_frames: int = 0
    age_ms: float = 0.0

    @property
    def hud_mode(self) -> str | None:
        """The HUD's mode for a frame without a mask (None when it has one)."""
        if self.source is not None:
            return None
        return AI_OFFLINE if self.state == OFFLINE else AI_LATE

    def hud_line(self) -> str:
        if self.source == "server":
            return f"server mask age {self.age_frames} fr {self.age_ms:.0f} ms"
        if self.source == "local":
            return "local fallback (server offline)"
        return "no mask: server offline" if self.state == OFFLINE else "no mask: none fresh from server"


@dataclass
class _Job:
    index: int
    headers: dict
    body: bytes
    sent: float = 0.0


@dataclass
class ClientCounters:
    requests: int = 0  # sent on the wire
    answered: int = 0
    rejected: int = 0  # refused by the server: 503 (queue full) and other 4xx/5xx
    late: int = 0  # dropped by the server past the deadline (504)
    superseded: int = 0  # replaced by a newer frame before it was sent
    skipped: int = 0  # not sent: the newest mask stays fresh for it (realtime/serve/pacing.py)
    reconnects: int = 0
    failures: int = 0  # connection errors and timeouts
    refused_server: int = 0  # probes whose /health did not fit the room's model (or refused its token)
    round_trip_ms: list = field(default_factory=list)
    server_queue_ms: list = field(default_factory=list)
    server_receive_ms: list = field(default_factory=list)
    server_compute_ms: list = field(default_factory=list)
    server_batch_sizes: dict = field(default_factory=dict)
    server_nodes: dict = field(default_factory=dict)  # answers per Ray node (its id's first 12 characters)


class _Connection:
    """One keep-alive HTTP connection to the server (one per sending thread)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidOptionError(f"--server {url!r} is not an http(s)://HOST:PORT URL")
        self.host, self.port, self.https = parts.hostname, parts.port, parts.scheme == "https"
        self.prefix, self.timeout_s, self.url = parts.path.rstrip("/"), timeout_s, url
        self.conn = None

    def call(self, method: str, route: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body); a broken connection raises ServerUnavailable and is dropped.

        A kept-alive connection the server closed while idle fails on first use: that one is retried once
        on a new connection (a timeout is not: the server is silent).
        """
        while True:
            reused = self.conn is not None
            if not reused:
                kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
                self.conn = kind(self.host, self.port, timeout=self.timeout_s)
            try:
                self.conn.request(method, self.prefix + route, body=body, headers=headers or {})
                response = self.conn.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and not isinstance(exc, TimeoutError):
                    continue
                reason = f"{type(exc).__name__}: {exc}"
                raise ServerUnavailable(f"server {self.url} unreachable ({reason}); start it with `endofuse serve` "
                                        f"or check --server", reason) from None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class RoomClient:
    """One room's connection to `endofuse serve` (see the module docstring)."""

    def __init__(self, url: str, token: str | None = None, deadline_ms: float = DEFAULT_DEADLINE_MS,
                 wire_dtype: str = DEFAULT_WIRE_DTYPE, max_in_flight: int = 1, timeout_s: float = 2.0,
                 backoff_s: float = 0.1, backoff_max_s: float = 2.0, request_every: str = "auto") -> None:
        if not deadline_ms > 0:
            raise InvalidOptionError(f"--deadline-ms must be > 0, got {deadline_ms}")
        if wire_dtype not in WIRE_DTYPES:
            raise InvalidOptionError(f"wire dtype {wire_dtype!r}: choose one of {', '.join(WIRE_DTYPES)}")
        if str(request_every) not in REQUEST_EVERY:
            raise InvalidOptionError(f"--request-every {request_every}: choose one of {', '.join(REQUEST_EVERY)}")
        if max_in_flight not in (1, 2):
            raise InvalidOptionError(f"max_in_flight must be 1 or 2, got {max_in_flight}")
        self.url, self.token, self.deadline_ms, self.wire_dtype = url, token, float(deadline_ms), wire_dtype
        self.timeout_s, self.backoff_min_s, self.backoff_max_s = timeout_s, backoff_s, backoff_max_s
        self.counters = ClientCounters()
        self._blocking = _Connection(url, timeout_s)
        self._blocking_lock = threading.Lock()
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._newest: Answer | None = None
        self._offline = False
        self._probing = False
        self._retry_at = 0.0
        self._backoff_s = backoff_s
        self._closed = False
        self._finished = -1  # the index of the newest job that ended (answered or failed)
        self._expected: tuple[tuple[int, int], int] | None = None  # (input size, classes) the room sends for
        self._verify = False  # the next probe asks /health first
        self.server_problem: str | None = None  # why the last /health probe was not used (one line)
        self.server_info: dict | None = None  # the last /health answer that fitted the room's model
        self._workers = [threading.Thread(target=self._send_loop, name=f"endofuse-room-send-{i}", daemon=True)
                         for i in range(max_in_flight)]
        self._started = False
        self.pacer = RequestPacer(request_every)  # which frames are sent

    # -- blocking calls ------------------------------------------------------
    def health(self) -> dict:
        """The server's /health answer (model, engine, input size); ServerUnavailable when unreachable."""
        status, _, body = self._call_blocking("GET", HEALTH_ROUTE)
        if status != 200:
            raise RequestRefused(status, f"server {self.url}: {body.decode(errors='replace').strip()}")
        return json.loads(body)

    def request(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        """One round trip for one pair: the logits, or RequestRefused / ServerUnavailable."""
        headers, body = encode_request(wli, nbi, self.wire_dtype, self.deadline_ms, self.token)
        status, answer_headers, answer = self._call_blocking("POST", SEGMENT_ROUTE, body, headers)
        if status != 200:
            raise RequestRefused(status, f"server {self.url} refused the frame ({status}): "
                                         f"{answer.decode(errors='replace').strip()}")
        return decode_response(answer_headers, answer)

    def _call_blocking(self, method, route, body=None, headers=None):
        auth = {"authorization": f"Bearer {self.token}"} if self.token else {}
        with self._blocking_lock:
            return self._blocking.call(method, route, body, {**auth, **(headers or {})})

    def expect(self, input_size, num_classes: int, offline: bool = False) -> None:
        """The model the room preprocesses for: a server is used only while its /health names the same
        input size and class count (checked after every outage). `offline`: start offline (the server was
        unreachable at open); the first frame probes."""
        with self._cond:
            self._expected = (tuple(int(v) for v in input_size), int(num_classes))
            if offline:
                self._offline, self._verify, self._retry_at = True, True, 0.0

    # -- the never-waiting path ------------------------------------------------
    def submit(self, wli: np.ndarray, nbi: np.ndarray | None, index: int, may_skip: bool = True) -> bool:
        """Queue frame `index` for sending (replacing one not yet sent); False when offline and not due a
        probe, or (`may_skip`) when the pacer leaves this frame out because the newest mask stays fresh."""
        if not self._started:
            self._started = True
            for worker in self._workers:
                worker.start()
        with self._cond:
            self.pacer.frame(index, now() * 1000)
            if self._offline and (now() < self._retry_at or self._probing):
                return False
            if may_skip and not self._offline and not self.pacer.should_send(index):
                self.counters.skipped += 1
                return False
        headers, body = encode_request(wli, nbi, self.wire_dtype, self.deadline_ms, self.token)  # outside the lock
        with self._cond:
            if self._pending is not None:
                self.counters.superseded += 1
            self._pending = _Job(index, headers, body)
            self.pacer.sent(index)
            self._probing = self._offline  # while offline, one probe at a time
            self._cond.notify()
            return True

    def newest(self) -> Answer | None:
        with self._cond:
            return self._newest

    @property
    def offline(self) -> bool:
        return self._offline

    def wait_for(self, index: int, timeout_s: float) -> Answer | None:
        """Wait until the answer for `index` (or a newer one) came back or its request failed."""
        end = now() + timeout_s
        with self._cond:
            while not self._closed and now() < end:
                if self._newest is not None and self._newest.index >= index:
                    return self._newest
                if self._finished >= index:
                    return None
                self._cond.wait(end - now())
        return None

    def _send_loop(self) -> None:
        connection = _Connection(self.url, self.timeout_s)
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    connection.close()
                    return
                job, self._pending = self._pending, None
                self.counters.requests += 1
                verify = self._verify and self._expected is not None
            job.sent = now()
            try:
                if verify:
                    problem = self._check_server(connection)
                    if problem is not None:
                        self._server_refused(job, problem)
                        continue
                    job.sent = now()
                status, headers, body = connection.call("POST", SEGMENT_ROUTE, job.body, job.headers)
            except ServerUnavailable:
                self._went_offline(job)
                continue
            self._answered(job, status, headers, body)

    def _check_server(self, connection: _Connection) -> str | None:
        """None when the server's /health fits the room's model; else one line saying why not. A server
        still starting (Ray's proxy answers 404/503 before the application is up) counts as unreachable."""
        auth = {"authorization": f"Bearer {self.token}"} if self.token else {}
        status, _, body = connection.call("GET", HEALTH_ROUTE, None, auth)
        if status in (401, 403):
            return (f"server {self.url} refused this room's token ({status}): "
                    f"{body.decode(errors='replace').strip()}")
        if status != 200:
            raise ServerUnavailable(f"server {self.url} not ready ({status})", f"not ready: {status}")
        try:
            info = json.loads(body)
            theirs = (tuple(int(v) for v in info["input_size"]), int(info["num_classes"]))
        except (ValueError, KeyError, TypeError):
            return f"server {self.url} answered /health without an endofuse model description"
        (size, classes) = self._expected
        if theirs != (size, classes):
            return (f"server {self.url} runs a model of input {theirs[0][0]}x{theirs[0][1]}, "
                    f"{theirs[1]} classes, but this room sends {size[0]}x{size[1]} for {classes} classes "
                    f"(its --model/--checkpoint): its masks are not used; start the room with the server's "
                    f"model")
        self.server_info = info
        return None

    def _server_refused(self, job: _Job, problem: str) -> None:
        with self._cond:
            self.counters.refused_server += 1
            self._offline, self._probing = True, False
            self._retry_at = now() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)
            self._finished = max(self._finished, job.index)
            repeated, self.server_problem = problem == self.server_problem, problem
            self._cond.notify_all()
        if not repeated:  # one line per distinct problem, not one per probe
            print(f"endofuse: {problem}", file=sys.stderr, flush=True)

    def _went_offline(self, job: _Job) -> None:
        with self._cond:
            self.counters.failures += 1
            self._offline, self._probing = True, False
            self._verify = True  # the server that comes back may be another one
            self._retry_at = now() + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)
            self._finished = max(self._finished, job.index)
            self._cond.notify_all()

    def _answered(self, job: _Job, status: int, headers: dict, body: bytes) -> None:
        received = now()
        with self._cond:
            if self._offline:
                self.counters.reconnects += 1
            self._offline, self._probing, self._backoff_s = False, False, self.backoff_min_s
            self._verify, self.server_problem = False, None
            self._finished = max(self._finished, job.index)
            counters = self.counters
            if status == 200:
                counters.answered += 1
                counters.round_trip_ms.append((received - job.sent) * 1000)
                self.pacer.answered((received - job.sent) * 1000, float(headers.get(QUEUE_MS, 0.0)))
                for key, values in ((QUEUE_MS, counters.server_queue_ms), (COMPUTE_MS, counters.server_compute_ms),
                                    (RECEIVE_MS, counters.server_receive_ms)):
                    if key in headers:
                        values.append(float(headers[key]))
                if BATCH_SIZE in headers:
                    size = int(headers[BATCH_SIZE])
                    counters.server_batch_sizes[size] = counters.server_batch_sizes.get(size, 0) + 1
                if NODE in headers:
                    counters.server_nodes[headers[NODE]] = counters.server_nodes.get(headers[NODE], 0) + 1
                if self._newest is None or job.index > self._newest.index:
                    self._newest = Answer(decode_response(headers, body), job.index, job.sent, received)
            elif status == 504:
                counters.late += 1
            else:
                counters.rejected += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(self.timeout_s + 1)
        self._blocking.close()


class RemoteEngine(Engine):
    """An `Engine` whose network runs on `endofuse serve`; `open_engine(server=URL)` returns one."""

    name = "remote"
    native = "numpy"

    def __init__(self, client: RoomClient, fallback: Engine | None = None, local_model=None) -> None:
        """`local_model`: a callable giving {"input_size", "num_classes", "model"} of the model the room
        would use (`factory.describe_model`). When the server cannot be reached (or is not ready) at open,
        the room starts offline on the fallback's model, else on that one, after one line on stderr;
        with neither, ServerUnavailable. A refused token (401/403) raises RequestRefused: a wrong
        --token is a mistake to fix, not an outage to ride out."""
        offline_at_start = False
        try:
            info = client.health()
        except (ServerUnavailable, RequestRefused) as exc:
            if isinstance(exc, RequestRefused) and exc.status in (401, 403):
                raise
            if fallback is None and local_model is None:
                raise
            if fallback is not None:
                info = {"input_size": fallback.input_size, "num_classes": fallback.num_classes,
                        "model": fallback.model_label}
            else:
                info = dict(local_model())
            info["engine"] = "unknown (server offline at start)"
            offline_at_start = True
            size = tuple(info["input_size"])
            reason = exc.reason if isinstance(exc, ServerUnavailable) else f"not ready: {exc.status}"
            print(f"endofuse: server {client.url} unreachable ({reason}); video runs with AI OFFLINE until it "
                  f"answers (the room assumes its own model: {size[0]}x{size[1]}, {info['num_classes']} classes)",
                  file=sys.stderr, flush=True)
        super().__init__(input_size=tuple(info["input_size"]), num_classes=int(info["num_classes"]),
                         model_label=str(info["model"]), device="cpu")
        if fallback is not None and tuple(fallback.input_size) != self.input_size:
            raise InvalidOptionError(f"--fallback local: the local model takes {fallback.input_size} but the "
                                     f"server's takes {self.input_size}; give the server's checkpoint")
        self.client, self.fallback = client, fallback
        client.expect(self.input_size, self.num_classes, offline=offline_at_start)
        self.server_engine = info.get("engine")
        self.name = f"remote:{self.server_engine}"
        self._index = 0
        self.frames = {"with_server_mask": 0, "fallback": 0, "offline": 0, "late": 0}
        self._age_ms: list[float] = []
        self._age_frames: list[int] = []

    def _run(self, wli, nbi):
        # one pair per request: the server batches across rooms, not within one
        return np.concatenate([self.client.request(wli[i:i + 1], None if nbi is None else nbi[i:i + 1])
                               for i in range(len(wli))])

    def warmup(self, iterations: int = 3, batch_size: int | None = None) -> float:
        """The server warms its own engine; only the local fallback is warmed here."""
        return 0.0 if self.fallback is None else self.fallback.warmup(iterations, batch_size)

    def infer_latest(self, wli: np.ndarray, nbi: np.ndarray | None, wait: bool = False
                     ) -> tuple[np.ndarray | None, RemoteFrame]:
        """Submit this frame and answer at once with the newest fresh mask (or the fallback's, or None).

        `wait` (recordings played losslessly): wait for this frame's own answer, at most the client's
        timeout, so a recording gives the same masks as a local engine while the server is up.
        """
        index, client = self._index, self.client
        self._index += 1
        sent = client.submit(wli, nbi, index, may_skip=not wait)
        answer = client.wait_for(index, client.timeout_s) if wait and sent else client.newest()
        t = now()
        fresh = answer is not None and ((t - answer.sent) * 1000 <= client.deadline_ms
                                        or (wait and answer.index == index))
        if fresh:
            age_ms, age_frames = (t - answer.sent) * 1000, index - answer.index
            self._age_ms.append(age_ms)
            self._age_frames.append(age_frames)
            self.frames["with_server_mask"] += 1
            return answer.logits, RemoteFrame(CONNECTED, "server", age_frames, age_ms)
        if client.offline and self.fallback is not None:
            self.frames["fallback"] += 1
            return self.fallback.infer(wli, nbi), RemoteFrame(FALLBACK, "local")
        state = OFFLINE if client.offline else LATE
        self.frames["offline" if state == OFFLINE else "late"] += 1
        return None, RemoteFrame(state, None)

    def remote_summary(self) -> dict:
        """The report's `remote` section."""
        c = self.client.counters
        if self.client.server_info is not None:  # a room that started offline learns it at the first answer
            self.server_engine = self.client.server_info.get("engine", self.server_engine)
        return {
            "server": self.client.url, "server_engine": self.server_engine, "deadline_ms": self.client.deadline_ms,
            "wire_dtype": self.client.wire_dtype, "requests": c.requests, "answered": c.answered,
            "rejected": c.rejected, "late": c.late, "superseded": c.superseded, "skipped": c.skipped,
            "request_every": self.client.pacer.every, "reconnects": c.reconnects,
            "connection_failures": c.failures, "server_refused": c.refused_server,
            "server_problem": self.client.server_problem, "offline_frames": self.frames["offline"],
            "late_frames": self.frames["late"], "fallback_frames": self.frames["fallback"],
            "frames_with_server_mask": self.frames["with_server_mask"],
            "overlay_age_ms": percentiles(self._age_ms), "overlay_age_frames": percentiles(self._age_frames),
            "round_trip_ms": percentiles(c.round_trip_ms), "server_queue_ms": percentiles(c.server_queue_ms),
            "server_receive_ms": percentiles(c.server_receive_ms),
            "server_compute_ms": percentiles(c.server_compute_ms),
            "server_batch_sizes": {str(k): v for k, v in sorted(c.server_batch_sizes.items())},
            "server_nodes": dict(c.server_nodes),
        }

    def close(self) -> None:
        self.client.close()


def open_remote_engine(server: str, token: str | None = None, deadline_ms: float = DEFAULT_DEADLINE_MS,
                       fallback: Engine | None = None, wire_dtype: str = DEFAULT_WIRE_DTYPE,
                       local_model=None, request_every: str = "auto") -> RemoteEngine:
    """A RemoteEngine on `server` (see RemoteEngine for a server down at open and `local_model`)."""
    return RemoteEngine(RoomClient(server, token, deadline_ms, wire_dtype, request_every=request_every), fallback,
                        local_model)
