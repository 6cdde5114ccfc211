"""The room client's states against a scripted fake server: connected, late, offline, reconnect, fallback.

The fake server speaks the real wire format (realtime/serve/wire.py) and answers logits that carry the
frame's number, so a test can tell which frame a mask belongs to.
"""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from endofuse.errors import EndofuseError
from endofuse.realtime.serve import client as room
from endofuse.realtime.serve import wire

SIZE = (32, 32)


class Script:
    """What the fake server does next: answer after `delay_s`, or with `status`."""

    def __init__(self):
        self.delay_s, self.status, self.requests = 0.0, 200, 0
        self.queue_ms = 0.1  # the queue wait the answers report (x-endofuse-queue-ms)
        self.drop_idle = False  # close every connection after its answer, unannounced (an idle timeout)
        self.health_status = 200  # what GET /health answers
        self.lock = threading.Lock()
        self.in_flight, self.most_in_flight, self.dtypes = 0, 0, set()


class FakeServer:
    def __init__(self, port: int = 0, size=SIZE):
        self.script = Script()
        script = self.script

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def log_message(self, *args):
                pass

            def _send(self, status, headers, body):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if script.health_status != 200:
                    return self._send(script.health_status, {}, b"scripted health refusal\n")
                body = json.dumps({"status": "ok", "engine": "fake", "model": "numbered frames",
                                   "input_size": list(size), "num_classes": 2}).encode()
                self._send(200, {"content-type": "application/json"}, body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with script.lock:
                    script.requests += 1
                    script.in_flight += 1
                    script.most_in_flight = max(script.most_in_flight, script.in_flight)
                    script.dtypes.add(headers.get(wire.DTYPE))
                time.sleep(script.delay_s)
                with script.lock:
                    script.in_flight -= 1
                if script.status != 200:
                    return self._send(script.status, {}, b"scripted refusal\n")
                request = wire.decode_request(headers, body, size)
                number = float(np.rint(request.wli[0, 0, 0, 0] * 255))  # the frame's number, sent as its pixels
                logits = np.full((1, 2, *size), number, np.float32)
                logits[:, 0] = 0
                timings = {wire.BATCH_SIZE: "1", wire.QUEUE_MS: f"{script.queue_ms:g}", wire.COMPUTE_MS: "1.0"}
                self._send(200, *wire.encode_response(logits, timings, request.answer_dtype))
                self.close_connection = script.drop_idle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(number: int) -> np.ndarray:
    return np.full((1, 3, *SIZE), (number % 250) / 255, np.float32)


def number_of(logits) -> int:
    return int(logits[0, 1, 0, 0])


def run_frames(engine, count: int, period_s: float = 0.01, start: int = 0):
    """Feed numbered frames like a paced camera; every call must return at once."""
    out = []
    for i in range(start, start + count):
        t = time.perf_counter()
        logits, info = engine.infer_latest(frame(i), None)
        assert time.perf_counter() - t < 0.05, "the room waited for the server"
        out.append((i, logits, info))
        time.sleep(period_s)
    return out


def open_room(url, fallback=None, local_model=None, **kwargs):
    kwargs.setdefault("wire_dtype", "float32")
    return room.RemoteEngine(room.RoomClient(url, **kwargs), fallback, local_model)


@pytest.mark.parametrize("in_flight", [None, 2])
def test_default_one_uint8_request_in_flight(server, in_flight):
    """A room's defaults: uint8 on the wire, one request at a time (a second only when asked for)."""
    server.script.delay_s = 0.04  # slower than the frames: a second sender would overlap the first
    kwargs = {} if in_flight is None else {"max_in_flight": in_flight}
    engine = room.RemoteEngine(room.RoomClient(server.url, deadline_ms=500, **kwargs))
    run_frames(engine, 25)
    engine.close()
    assert server.script.dtypes == {"uint8"}
    assert server.script.most_in_flight == (1 if in_flight is None else 2)


def test_connected_newest_frame_wins(server):
    server.script.delay_s = 0.03  # slower than the 10-ms frame period: frames must be skipped, not queued
    engine = open_room(server.url, deadline_ms=500)
    assert engine.input_size == SIZE and engine.name == "remote:fake"
    frames = run_frames(engine, 40)
    engine.close()
    drawn = [(i, logits, info) for i, logits, info in frames if logits is not None]
    assert len(drawn) >= 30
    for i, logits, info in drawn:
        assert info.state == room.CONNECTED and info.source == "server"
        assert number_of(logits) == (i - info.age_frames) % 250  # the mask belongs to the frame it says
        assert info.hud_line().startswith("server mask age")
    summary = engine.remote_summary()
    assert summary["superseded"] > 0  # newest wins: waiting frames were replaced, not queued
    assert summary["requests"] < 40 and summary["answered"] == summary["requests"]
    assert summary["round_trip_ms"]["p50"] >= 30 and summary["server_batch_sizes"] == {"1": summary["answered"]}
    assert summary["overlay_age_frames"]["max"] <= 8


def test_connection_closed_while_idle_is_reopened_not_offline(server):
    server.script.drop_idle = True
    engine = open_room(server.url, deadline_ms=500)
    for i in range(3):  # the blocking path: each call finds the last connection closed by the server
        assert number_of(engine.infer(frame(i), None)) == i
    frames = run_frames(engine, 20, period_s=0.02)
    engine.close()
    assert engine.client.counters.failures == 0 and not any(info.state == room.OFFLINE for *_, info in frames)
    assert frames[-1][1] is not None


def test_late_answers_are_not_drawn(server):
    server.script.delay_s = 0.25
    engine = open_room(server.url, deadline_ms=60)
    frames = run_frames(engine, 40)
    engine.close()
    assert all(logits is None for _, logits, _ in frames)
    assert all(info.state == room.LATE and info.hud_mode == room.AI_LATE for _, _, info in frames)
    summary = engine.remote_summary()
    assert summary["late_frames"] == 40 and summary["offline_frames"] == 0 and summary["answered"] >= 1


@pytest.mark.parametrize("status, counter", [(503, "rejected"), (504, "late"), (401, "rejected")])
def test_refusals_are_counted(server, status, counter):
    server.script.status = status
    engine = open_room(server.url, deadline_ms=100)
    frames = run_frames(engine, 15)
    engine.close()
    summary = engine.remote_summary()
    assert summary[counter] == summary["requests"] >= 5
    assert all(logits is None and info.hud_mode == room.AI_LATE for _, logits, info in frames)


def test_offline_then_reconnect_with_backoff():
    port = free_port()
    down = FakeServer(port)  # up at open (the room learns the input size), then gone
    engine = open_room(f"http://127.0.0.1:{port}", deadline_ms=100, backoff_s=0.05, backoff_max_s=0.4)
    down.stop()
    frames = run_frames(engine, 60)  # 0.6 s offline
    assert all(logits is None and info.hud_mode == room.AI_OFFLINE for _, logits, info in frames[5:])
    failures = engine.client.counters.failures
    assert 2 <= failures <= 8  # probes back off (0.05, 0.1, 0.2, 0.4 s) instead of one per frame
    up = FakeServer(port)
    try:
        frames = run_frames(engine, 80, start=60)
    finally:
        engine.close()
        up.stop()
    assert frames[-1][1] is not None and frames[-1][2].state == room.CONNECTED
    summary = engine.remote_summary()
    assert summary["reconnects"] == 1
    assert summary["offline_frames"] >= 55 and summary["frames_with_server_mask"] >= 50


def test_fallback_runs_local_engine_while_offline():
    from endofuse.realtime.engines import open_engine

    local = open_engine(backend="torch")
    size = tuple(local.input_size)
    port = free_port()
    fake = FakeServer(port, size)
    engine = open_room(fake.url, fallback=local, deadline_ms=100, backoff_s=0.05, backoff_max_s=0.1)
    fake.stop()
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    engine.infer_latest(x, x)  # the first failure marks the room offline
    time.sleep(0.05)
    logits, info = engine.infer_latest(x, x)
    assert info.state == room.FALLBACK and info.source == "local"
    np.testing.assert_allclose(logits, local.infer(x, x), rtol=1e-5, atol=1e-5)
    back = FakeServer(port, size)
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            logits, info = engine.infer_latest(x, x)
            if info.source == "server":
                break
            time.sleep(0.02)
    finally:
        engine.close()
        back.stop()
    assert info.source == "server"  # back to the server once it answers
    assert engine.remote_summary()["fallback_frames"] >= 1


def test_unreachable_server_at_open_starts_offline(capsys):
    """open_engine(server=...) with the server down: one line, then an engine that answers at once, offline,
    sized like the local model the arguments name (tiny: 160x160, 2 classes)."""
    from endofuse.realtime.engines import open_engine

    url = f"http://127.0.0.1:{free_port()}"
    engine = open_engine(server=url)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"server {url} unreachable" in err and "AI OFFLINE" in err
    assert "160x160, 2 classes" in err
    assert engine.input_size == (160, 160) and engine.num_classes == 2
    x = np.zeros((1, 3, 160, 160), np.float32)
    logits, info = engine.infer_latest(x, x)
    engine.close()
    assert logits is None and info.hud_mode == room.AI_OFFLINE
    # a bare RemoteEngine with no model to assume still refuses, in one line
    with pytest.raises(room.ServerUnavailable, match=f"server {url} unreachable") as err:
        room.RemoteEngine(room.RoomClient(url))
    assert "\n" not in str(err.value)
    with pytest.raises(EndofuseError, match="not an http"):
        room.RoomClient("gpu-box:8000")


def test_wrong_token_at_open_is_refused(server):
    """A server that answers but refuses the token is a configuration error, not an outage: refused at open."""
    server.script.health_status = 401
    with pytest.raises(room.RequestRefused, match="scripted health refusal") as err:
        open_room(server.url, local_model=lambda: {"input_size": SIZE, "num_classes": 2, "model": "x"})
    assert err.value.status == 401 and "\n" not in str(err.value)


def test_describe_model_reads_sizes_without_an_engine(tmp_path):
    from endofuse.model import build_model
    from endofuse.model.checkpoint import save_checkpoint
    from endofuse.realtime.engines.factory import describe_model

    assert describe_model(None, "paper")["input_size"] == (224, 224)  # no weights needed for the config
    path = save_checkpoint(tmp_path / "c.pt", build_model("tiny", num_classes=3, img_size=64))
    info = describe_model(path)
    assert info["input_size"] == (64, 64) and info["num_classes"] == 3


def test_pipeline_started_with_server_down_gets_masks_once_it_starts():
    """A room opened while its server is down runs; the server starts on that port mid-run: masks return."""
    from endofuse.realtime import build_pipeline
    from endofuse.realtime.engines.factory import describe_model

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = room.RemoteEngine(room.RoomClient(url, wire_dtype="float32", backoff_s=0.02, backoff_max_s=0.05),
                               local_model=lambda: describe_model(None, "tiny"))
    assert engine.input_size == (160, 160)
    pipeline = build_pipeline("synthetic:3", "synthetic:3", engine, frames=60, warmup_frames=0)
    results, up = [], None
    try:
        for result in pipeline:
            results.append(result)
            if len(results) == 10:
                up = FakeServer(port, (160, 160))
            time.sleep(0.01)
    finally:
        engine.close()
        if up is not None:
            up.stop()
    assert [r.index for r in results] == list(range(60))  # every frame written, none waited for
    offline = [r.index for r in results if r.mode == room.AI_OFFLINE]
    served = [r.index for r in results if r.mode not in (room.AI_OFFLINE, room.AI_LATE)]
    assert offline[:10] == list(range(10)) and served and served[-1] == 59
    assert max(offline) < served[0]  # once the server answers, the masks stay
    remote = pipeline.report()["remote"]
    assert remote["offline_frames"] == len(offline) and remote["frames_with_server_mask"] == len(served)
    assert remote["reconnects"] == 1 and remote["server_refused"] == 0
    assert remote["server_engine"] == "fake"  # learnt from /health once it answered
    assert up.script.requests == remote["answered"]


@pytest.mark.parametrize("started_down", [True, False])
def test_server_of_another_model_is_not_used(capsys, started_down):
    """The server that answers runs another input size: one line naming both, no masks, counted; the room
    keeps probing (only /health) and stays offline. Checked at open when the server is up, after an outage
    (and at the first answer after a start offline) otherwise."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = None if started_down else FakeServer(port)  # the room's own model: SIZE
    engine = open_room(url, deadline_ms=100, backoff_s=0.02, backoff_max_s=0.05,
                       local_model=lambda: {"input_size": SIZE, "num_classes": 2, "model": "numbered"})
    outage = []
    if first is not None:
        first.stop()
        outage = run_frames(engine, 5)
    other = FakeServer(port, (48, 48))
    capsys.readouterr()
    try:
        frames = run_frames(engine, 40)
    finally:
        engine.close()
        other.stop()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "input 48x48, 2 classes" in err and f"sends {SIZE[0]}x{SIZE[1]} for 2 classes" in err
    assert all(logits is None and info.hud_mode == room.AI_OFFLINE for _, logits, info in frames)
    summary = engine.remote_summary()
    assert summary["server_refused"] >= 2 and "48x48" in summary["server_problem"]
    assert other.script.requests == 0  # no frame was sent to it
    assert summary["offline_frames"] == 40 + sum(info.hud_mode == room.AI_OFFLINE for *_, info in outage)


def test_pipeline_keeps_every_frame_while_server_is_gone(server):
    """A recording through a served engine whose server vanished: all frames out, each counted offline."""
    from endofuse.realtime import build_pipeline

    engine = open_room(server.url, deadline_ms=100)
    server.stop()
    server.stop = lambda: None
    pipeline = build_pipeline("synthetic:3", "synthetic:3", engine, frames=12, warmup_frames=2)
    results = list(pipeline)
    engine.close()
    assert [r.index for r in results] == list(range(12))
    assert all(r.mode == room.AI_OFFLINE and not r.mask.any() for r in results)
    last = results[-1]
    half = last.frame.shape[0] // 2
    np.testing.assert_array_equal(last.overlay[half:], last.frame[half:])  # the bare frame below the HUD box
    assert not np.array_equal(last.overlay[:half], last.frame[:half])  # the HUD box is drawn
    report = pipeline.report()
    assert report["remote"]["offline_frames"] == 12 and report["frames"] == 12


@pytest.mark.parametrize("argv, message", [
    (["serve", "--replicas", "0"], "--replicas must be >= 1, got 0"),
    (["serve", "--autoscale", "3,1"], "--autoscale '3,1': need 0 <= MIN <= MAX"),
    (["serve", "--autoscale", "four"], "--autoscale 'four': give MIN,MAX replicas"),
    (["serve", "--port", "70000"], "--port 70000 is not a valid TCP port"),
    (["serve", "--host", "192.0.2.1"], "--host 192.0.2.1 is not an address of this machine"),
    (["run", "--wli", "synthetic", "--frames", "2", "--fallback", "local"], "--fallback local applies to a served"),
    (["bench", "--frames", "10", "--server", "http://127.0.0.1:1"], "server http://127.0.0.1:1 unreachable"),
])
def test_cli_refuses_bad_serving_options_in_one_line(argv, message, capsys):
    from endofuse import cli

    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# -- which frames are sent (realtime/serve/pacing.py) ---------------------------------------------------

def test_pacer_hand_computed_cases():
    from endofuse.realtime.serve.pacing import WINDOW, RequestPacer

    def feed(pacer, frames, answers):
        for i in range(frames):
            pacer.frame(i, i * 33.3)
        for round_trip, queue in answers:
            pacer.answered(round_trip, queue)

    every = RequestPacer("1")
    feed(every, 5, [(5.0, 0.0)])
    assert [every.should_send(i) for i in range(5)] == [True] * 5
    other = RequestPacer("2")
    sent = []
    for i in range(7):
        if other.should_send(i):
            other.sent(i)
            sent.append(i)
    assert sent == [0, 2, 4, 6]
    auto = RequestPacer("auto")
    assert not auto.pacing  # nothing measured yet: every frame
    feed(auto, 5, [(12.0, 2.0)])  # the server's own time 10 ms < 0.8 x 33.3 ms
    assert auto.frame_ms == pytest.approx(33.3) and auto.service_ms == 10.0 and auto.pacing
    auto.sent(4)
    assert [auto.should_send(i) for i in (5, 6)] == [False, True]
    distant = RequestPacer("auto")
    feed(distant, 5, [(60.0, 0.0)] * 3)  # 60 ms without any queue: a distant server, every frame
    assert distant.service_ms == 60.0 and not distant.pacing
    busy = RequestPacer("auto")
    feed(busy, 5, [(70.0, 40.0), (75.0, 62.0), (80.0, 50.0)])  # long round trips, mostly queue
    assert busy.service_ms == 13.0 and busy.queue_ms == 50.0 and busy.pacing
    feed(busy, 0, [(40.0, 0.0)] * (WINDOW - 2))  # the window now ends with 13, 30, 40, 40, ...
    assert busy.service_ms == 13.0 and busy.queue_ms == 0.0 and busy.pacing
    feed(busy, 0, [(40.0, 0.0)])  # 13 leaves the window: the server's own time is 30 ms, most of a frame
    assert busy.service_ms == 30.0 and not busy.pacing
    overloaded = RequestPacer("auto")  # batches so slow that even the least round trip less queue is long
    feed(overloaded, 5, [(60.0, 20.0), (65.0, 25.0), (70.0, 9.0)])
    assert overloaded.service_ms == 40.0 and overloaded.queue_ms == 20.0  # 20 ms > a quarter of 33.3 ms
    assert overloaded.pacing
    feed(overloaded, 0, [(60.0, 8.0)] * 2)  # the median queue wait now 9 ms, still over 8.3
    assert overloaded.queue_ms == 9.0 and overloaded.pacing
    feed(overloaded, 0, [(60.0, 8.0)] * 2)  # 20, 25, 9, 8, 8, 8, 8: median 8 ms, under a quarter frame
    assert overloaded.queue_ms == 8.0 and not overloaded.pacing
    with pytest.raises(ValueError, match="auto, 1, 2"):
        RequestPacer("3")


def paced_run(url, request_every, frames=45):
    engine = open_room(url, deadline_ms=500, request_every=request_every)
    out = run_frames(engine, frames, period_s=1 / 30)
    summary = engine.remote_summary()
    engine.close()
    return out, summary


def test_fast_server_gets_every_other_frame_and_every_frame_keeps_a_fresh_mask(server):
    out, summary = paced_run(server.url, "auto")
    assert summary["request_every"] == "auto"
    assert summary["skipped"] + summary["requests"] + summary["superseded"] == 45
    assert 45 * 0.4 <= summary["skipped"] <= 45 * 0.55  # about every other frame, after the first answers
    for i, logits, info in out[5:]:
        assert logits is not None and info.age_frames <= 2, (i, info)  # a mask at most 2 frames old
        assert number_of(logits) == (i - info.age_frames) % 250
    _, every = paced_run(server.url, "1")
    assert every["skipped"] == 0 and every["requests"] >= 40


def test_distant_server_gets_every_frame_and_a_busy_one_every_other(server):
    """60 ms round trips: a far server (no queue) gets every frame; one that reports 55 ms of its own queue
    is busy, not far, and gets every other frame."""
    server.script.delay_s = 0.06
    _, far = paced_run(server.url, "auto", frames=30)
    assert far["skipped"] == 0
    server.script.queue_ms = 55.0
    _, busy = paced_run(server.url, "auto", frames=30)
    assert busy["skipped"] > 0


def test_cli_run_with_server_down_runs_offline(tmp_path, capsys):
    """`endofuse run --server URL` with nothing listening: one line, every frame written, all offline."""
    from endofuse import cli

    url = f"http://127.0.0.1:{free_port()}"
    report = tmp_path / "r.json"
    assert cli.main(["run", "--wli", "synthetic", "--nbi", "synthetic", "--frames", "4", "--warmup", "0",
                     "--server", url, "--frames-dir", str(tmp_path / "f"), "--report", str(report)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"server {url} unreachable" in err and "AI OFFLINE until it answers" in err
    written = json.loads(report.read_text())
    assert written["frames"] == 4 and written["remote"]["offline_frames"] == 4
    assert len(list((tmp_path / "f").glob("overlay_*.png"))) == 4
