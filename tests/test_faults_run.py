"""`endofuse run` against hostile paths, full disks, signals and bad option values (docs/faults.md).

Every failure found while the run runs (write errors, damaged inputs, signals) is tested on both runtimes:
`--runtime holoscan` must end exactly as the native one. Checks made before the runtime starts (outputs
against inputs, option values) are shared code and run once.
"""
import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import pytest

from endofuse import cli
from endofuse.model.synthetic import SyntheticScene

from conftest import child_env, write_video

# A Holoscan graph that hangs must fail the test, not CI: each holoscan case has its own time limit.
RUNTIMES = ["native", pytest.param("holoscan", marks=[
    pytest.mark.skipif(importlib.util.find_spec("holoscan") is None, reason="the [holoscan] extra is not installed"),
    pytest.mark.timeout(120)])]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    scene = SyntheticScene(3, (64, 80))
    write_video(folder / "wli.mp4", [scene.frame(i / 30)[0] for i in range(12)])
    return folder / "wli.mp4"


def frames_in(path):
    capture, count, size = cv2.VideoCapture(str(path)), 0, None
    while (frame := capture.read()[1]) is not None:
        count, size = count + 1, frame.shape[:2]
    return count, size


def one_line_error(capsys, rc, code=1):
    err = capsys.readouterr().err
    assert rc == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def image_folder(folder, n=4, size=(48, 56)):
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((*size, 3), 30 * i, np.uint8))
    return folder


# -- 1. outputs never overwrite inputs ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["out=wli", "report=wli", "report=out", "out-symlink", "out=checkpoint",
                                  "frames-dir=wli-folder", "frames-dir-contains-wli", "out-in-wli-folder"])
def test_an_output_that_is_an_input_is_refused_before_any_work(case, stand_in_engine, clip, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    wli = work / "wli.mp4"
    wli.write_bytes(clip.read_bytes())
    folder = image_folder(tmp_path / "frames")
    ckpt = work / "w.pt"
    ckpt.write_bytes(b"weights")
    link = tmp_path / "link.mp4"
    link.symlink_to(wli)
    argv = {
        "out=wli": ["--wli", wli, "--out", wli],
        "report=wli": ["--wli", wli, "--report", wli],
        "report=out": ["--wli", wli, "--out", tmp_path / "o.mp4", "--report", tmp_path / "o.mp4"],
        "out-symlink": ["--wli", wli, "--out", link],
        "out=checkpoint": ["--wli", wli, "--checkpoint", ckpt, "--out", work / "w.pt"],
        "frames-dir=wli-folder": ["--wli", folder, "--frames-dir", folder],
        "frames-dir-contains-wli": ["--wli", wli, "--frames-dir", work],
        "out-in-wli-folder": ["--wli", folder, "--out", folder / "overlay.mp4"],
    }[case]
    before = {p: p.read_bytes() for p in (wli, ckpt, *folder.iterdir())}
    rc = cli.main(["run", *map(str, argv)])
    err = one_line_error(capsys, rc)
    assert "input" in err or "same path" in err
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(folder.iterdir()) == sorted(p for p in before if p.parent == folder)


def test_frames_dir_with_foreign_files_needs_force_and_a_rerun_is_allowed(stand_in_engine, clip, tmp_path, capsys):
    target = tmp_path / "frames"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    rc = cli.main(["run", "--wli", str(clip), "--frames-dir", str(target)])
    err = one_line_error(capsys, rc)
    assert "notes.txt" in err and "--force" in err
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
    assert cli.main(["run", "--wli", str(clip), "--frames-dir", str(target), "--force"]) == 0
    assert (target / "notes.txt").read_text() == "mine" and len(list(target.glob("overlay_*.png"))) == 12
    (target / "notes.txt").unlink()
    assert cli.main(["run", "--wli", str(clip), "--frames-dir", str(target)]) == 0  # only its own files: allowed


# -- 2. exit codes and reports that are true ----------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_report_write_failure_is_one_line_and_keeps_the_previous_report(runtime, stand_in_engine, clip, tmp_path,
                                                                         capsys, monkeypatch):
    import endofuse.outputs as outputs

    report = tmp_path / "report.json"
    report.write_text('{"previous": true}\n')

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    rc = cli.main(["run", "--runtime", runtime, "--wli", str(clip), "--report", str(report)])
    err = one_line_error(capsys, rc)
    assert str(report) in err and "no space left on device" in err
    assert json.loads(report.read_text()) == {"previous": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp file left


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KiB tmpfs: a real full disk (needs root and mount; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tiny tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_full_disk_video_is_exit_1_naming_the_file_and_keeps_the_old_video(runtime, stand_in_engine,
                                                                           tiny_filesystem, tmp_path, capsys):
    out, report = tiny_filesystem / "overlay.mp4", tmp_path / "r.json"
    out.write_bytes(b"previous good video")
    rc = cli.main(["run", "--runtime", runtime, "--wli", "synthetic", "--frames", "30", "--out", str(out),
                   "--report", str(report)])
    err = one_line_error(capsys, rc)
    assert str(out) in err and "no space left on device" in err
    assert out.read_bytes() == b"previous good video"
    assert sorted(p.name for p in tiny_filesystem.iterdir()) == ["overlay.mp4"]
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["error"] == err.strip().split("error: ", 1)[1]
    assert data["frames"] == data["stopped_after_frames"] == 30 and "partial_video" not in data


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_full_disk_frames_dir_is_exit_1_naming_the_file(runtime, stand_in_engine, tiny_filesystem, capsys):
    rc = cli.main(["run", "--runtime", runtime, "--wli", "synthetic", "--frames", "30", "--frames-dir",
                   str(tiny_filesystem / "f")])
    err = one_line_error(capsys, rc)
    assert "overlay_0000" in err and "no space left on device" in err


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_report_is_strict_json_with_null_and_a_reason_when_all_frames_are_warm_up(runtime, stand_in_engine, clip,
                                                                                  tmp_path):
    report = tmp_path / "r.json"
    assert cli.main(["run", "--runtime", runtime, "--wli", str(clip), "--report", str(report), "--warmup", "20"]) == 0

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(report.read_text(), parse_constant=no_constants)
    assert data["fps"] is None and data["latency_ms"]["p50"] is None
    assert "warm-up" in data["statistics_note"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mid_stream_decode_error_leaves_a_partial_video_and_a_report_saying_where(runtime, stand_in_engine, tmp_path,
                                                                                  capsys):
    full = tmp_path / "full.avi"
    write_video(full, [np.full((40, 48, 3), 8 * i, np.uint8) for i in range(30)], fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out, report = tmp_path / "out.mp4", tmp_path / "r.json"
    rc = cli.main(["run", "--runtime", runtime, "--wli", str(cut), "--out", str(out), "--report", str(report)])
    err = one_line_error(capsys, rc)
    assert "truncated or corrupt" in err
    data = json.loads(report.read_text())
    partial = tmp_path / "out.partial.mp4"
    assert not out.exists() and data["complete"] is False and data["partial_video"] == str(partial)
    assert frames_in(partial)[0] == data["frames"] == data["stopped_after_frames"] > 0


STAND_IN_RUN = textwrap.dedent("""
    import sys
    import endofuse.realtime.engines as engines
    from endofuse import cli
    from conftest import ColourThresholdEngine
    engines.open_engine = lambda *a, **k: ColourThresholdEngine((32, 40), threshold=0.7)
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143),
                                       pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_sigterm_and_sigint_finalise_the_video_and_a_true_report(sig, code, runtime, tmp_path):
    out, report = tmp_path / "live.mp4", tmp_path / "r.json"
    cmd = [sys.executable, "-c", STAND_IN_RUN, "run", "--runtime", runtime, "--wli", "synthetic", "--nbi",
           "synthetic", "--live", "--frames", "100000", "--out", str(out), "--report", str(report), "--warmup", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    partial = tmp_path / ".live.partial.mp4"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and not (partial.exists()
                                                                       and partial.stat().st_size > 20_000):
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["signal"] == signal.Signals(sig).name
    count, _ = frames_in(out)
    assert count == data["frames"] > 0
    assert data["paired"] + data["stale_pairs"] + data["nbi_missing"] == data["frames"]
    assert not partial.exists()


SIGNAL_WHILE_WRITING = STAND_IN_RUN.replace("sys.exit(", """import os, signal
from endofuse.realtime.output.sinks import VideoFileSink
stock = VideoFileSink.write
def write_then_signal(self, result):  # the signal lands inside the output stage, right after a frame is written
    stock(self, result)
    if self.frames == 5:
        os.kill(os.getpid(), signal.SIGTERM)
VideoFileSink.write = write_then_signal
sys.exit(""")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_signal_inside_the_output_stage_still_gives_a_video_matching_the_report(runtime, tmp_path):
    out, report = tmp_path / "o.mp4", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_WRITING, "run", "--runtime", runtime, "--wli",
                           "synthetic", "--nbi", "synthetic", "--frames", "100000", "--out", str(out), "--report",
                           str(report)],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 143, proc.stderr
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and frames_in(out)[0] == data["frames"] >= 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "r.json"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_signal_during_a_run_whose_video_cannot_be_written_is_exit_1_with_both_in_the_report(runtime,
                                                                                               tiny_filesystem,
                                                                                               tmp_path):
    (tiny_filesystem / "filler").write_bytes(b"x" * 56 * 1024)  # the 8 KiB left cannot hold the video
    out, report = tiny_filesystem / "o.mp4", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_WRITING, "run", "--runtime", runtime, "--wli",
                           "synthetic", "--nbi", "synthetic", "--frames", "100000", "--out", str(out), "--report",
                           str(report)], capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and str(out) in proc.stderr and "no space left on device" in proc.stderr
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["signal"] == "SIGTERM" and data["complete"] is False
    assert data["error"] in proc.stderr and data["frames"] == data["stopped_after_frames"] >= 5
    assert sorted(p.name for p in tiny_filesystem.iterdir()) == ["filler"]


# -- 4. plausible but wrong inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("fps", ["inf", "0", "-5", "nan"])
def test_non_finite_or_non_positive_fps_is_one_line(fps, stand_in_engine, tmp_path, capsys):
    rc = cli.main(["run", "--wli", "synthetic", "--frames", "2", "--fps", fps, "--out", str(tmp_path / "o.mp4")])
    assert "--fps" in one_line_error(capsys, rc)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_png_named_mp4_is_refused(runtime, stand_in_engine, tmp_path, capsys):
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    rc = cli.main(["run", "--runtime", runtime, "--wli", str(fake)])
    err = one_line_error(capsys, rc)
    assert str(fake) in err and "PNG image, not a video" in err


def test_synthetic_without_frames_is_refused(stand_in_engine, capsys):
    rc = cli.main(["run", "--wli", "synthetic", "--nbi", "synthetic"])
    assert "--frames" in one_line_error(capsys, rc)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_odd_sized_input_keeps_its_size_in_frames_dir(runtime, stand_in_engine, tmp_path):
    folder = image_folder(tmp_path / "odd", n=3, size=(41, 53))
    frames, out = tmp_path / "frames", tmp_path / "o.mp4"
    assert cli.main(["run", "--runtime", runtime, "--wli", str(folder), "--frames-dir", str(frames),
                     "--out", str(out)]) == 0
    assert cv2.imread(str(frames / "overlay_000000.png")).shape[:2] == (41, 53)
    count, size = frames_in(out)
    assert count == 3 and size == (40, 52)  # documented: video encoders round odd sizes down to even


# -- 5. one line for ordinary mistakes -----------------------------------------------------------------------
@pytest.mark.parametrize("device, message", [("banana", "not a device"), ("cuda", "use --device cpu")])
def test_bad_device_is_one_line(device, message, clip, capsys):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = cli.main(["run", "--wli", str(clip), "--engine", "torch", "--device", device])
    assert message in one_line_error(capsys, rc)
