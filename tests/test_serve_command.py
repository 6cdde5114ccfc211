"""`endofuse serve` as a user runs it: the real command in a subprocess, rooms end to end, then SIGTERM.

One server (a local Ray it starts itself), one room through the command line (`endofuse run --server`)
and two rooms through `RoomClient` in threads; their masks are checked against a local engine on the same
frames. Then SIGTERM: exit 143 within seconds, the port free, none of the Ray processes it started left.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.serve")

from endofuse.realtime import build_pipeline, segment_pair  # noqa: E402
from endofuse.realtime.engines import open_engine  # noqa: E402
from endofuse.realtime.input.source_specs import open_source_pair  # noqa: E402
from endofuse.realtime.input.sources import MemorySource  # noqa: E402
from endofuse.realtime.serve import client as room  # noqa: E402

pytestmark = pytest.mark.slow
FRAMES = 6
STOP_BOUND_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on it and a restarted server could bind it (with SO_REUSEADDR, as servers do: the
    rooms' closed connections may sit in TIME_WAIT for a minute)."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now (Ray's GCS, raylet, agents, and the workers under the raylet)."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [c for c in children if c not in found]
            found.update(children)
    return found


def of_session(pid: int) -> set[int]:
    """Processes whose command line names the Ray session this driver started (session_..._<pid>), even
    those no longer below it."""
    marker = f"_{pid}/".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/session_" in (cmdline := (entry / "cmdline").read_bytes()) and marker in cmdline:
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.add(pid)
    return out


def wait_for_health(url: str, server: subprocess.Popen, timeout_s: float) -> dict:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if server.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.5)
    server.kill()
    _, err = server.communicate(timeout=30)
    pytest.fail(f"endofuse serve did not answer /health within {timeout_s:.0f} s "
                f"(exit {server.returncode}); its stderr:\n{err}")


def synthetic_pairs(seed: int, count: int) -> tuple[list, list]:
    """The frames `--wli synthetic:SEED --nbi synthetic:SEED` gives (WLI and NBI of one shared scene)."""
    wli, nbi = open_source_pair(f"synthetic:{seed}", f"synthetic:{seed}", 30.0, count)
    for source in (wli, nbi):
        source.open()
        source.start(0.0, paced=False)
    images = [(wli.next_frame().image, nbi.next_frame().image) for _ in range(count)]
    wli.close(), nbi.close()
    return [w for w, _ in images], [n for _, n in images]


def thread_room(url: str, wli: list, nbi: list, results: dict, key) -> None:
    engine = room.RemoteEngine(room.RoomClient(url, wire_dtype="float32", deadline_ms=5000))
    pipeline = build_pipeline(MemorySource(wli, "wli"), MemorySource(nbi, "nbi"), engine, warmup_frames=0)
    results[key] = (list(pipeline), pipeline.report())
    engine.close()


def test_serve_command_three_rooms_then_sigterm(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "endofuse", "serve", "--port", str(port), "--engine", "torch",
                               "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True)
    try:
        health = wait_for_health(url, server, 90)
        assert health["input_size"] == [160, 160] and health["engine"] == "torch"
        # room 0 through the command line; rooms 1 and 2 as RoomClients in threads, at the same time
        rooms = {i: synthetic_pairs(30 + i, FRAMES) for i in range(3)}
        results = {}
        threads = [threading.Thread(target=thread_room, args=(url, *rooms[i], results, i)) for i in (1, 2)]
        for t in threads:
            t.start()
        out = tmp_path / "room0"
        cli_room = subprocess.run(
            [sys.executable, "-m", "endofuse", "run", "--wli", "synthetic:30", "--nbi", "synthetic:30", "--frames",
             str(FRAMES), "--warmup", "0", "--stabilise", "off", "--server", url, "--deadline-ms", "5000",
             "--frames-dir", str(out), "--report", str(tmp_path / "room0.json")],
            capture_output=True, text=True, env=env, timeout=120)
        for t in threads:
            t.join(120)
        assert cli_room.returncode == 0, cli_room.stderr

        local = open_engine(backend="torch")
        for i in (1, 2):  # float32 on the wire: the very masks a local engine gives
            frames, report = results[i]
            wli, nbi = rooms[i]
            assert [f.index for f in frames] == list(range(FRAMES))
            for f in frames:
                reference = segment_pair(local, wli[f.index], nbi[f.nbi_index])
                np.testing.assert_array_equal(f.mask, reference.mask, err_msg=f"room {i} frame {f.index}")
            assert report["remote"]["frames_with_server_mask"] == FRAMES
        # the command-line room sends uint8 (its default): inputs rounded by at most half a camera step,
        # so a mask may differ from the local float32 one in a few boundary pixels, never more
        import cv2

        report = json.loads((tmp_path / "room0.json").read_text())
        assert report["frames"] == FRAMES and report["remote"]["frames_with_server_mask"] == FRAMES
        assert report["remote"]["offline_frames"] == 0 and report["remote"]["wire_dtype"] == "uint8"
        wli, nbi = rooms[0]
        for index in range(FRAMES):
            mask = cv2.imread(str(out / f"mask_{index:06d}.png"), cv2.IMREAD_GRAYSCALE) > 0
            reference = segment_pair(local, wli[index], nbi[index]).mask > 0
            differ = (mask != reference).mean()
            print(f"CLI room frame {index}: {differ:.5f} of pixels differ from the local float32 mask")
            assert reference.any() and differ <= 0.005, f"CLI room frame {index}"

        before = descendants(server.pid) | of_session(server.pid)
        assert before, "endofuse serve started no Ray processes?"
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"endofuse serve did not exit within {STOP_BOUND_S:.0f} s of SIGTERM")
        took = time.monotonic() - sent
        _, err = server.communicate(timeout=10)
        assert server.returncode == 143, err
        assert "endofuse serve: stopped (SIGTERM)" in err
        end = time.monotonic() + 5  # the raylet's workers die with it, a moment later
        while alive(before | of_session(server.pid)) and time.monotonic() < end:
            time.sleep(0.2)
        left = alive(before | of_session(server.pid))
        assert not left, f"Ray processes left after SIGTERM: {sorted(left)}"
        assert port_is_free(port)
        print(f"SIGTERM to exit: {took:.1f} s")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
