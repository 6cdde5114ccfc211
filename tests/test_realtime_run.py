"""`endofuse run` and `endofuse bench` from the command line: outputs, reports and every fault as one line."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from endofuse import cli
from endofuse.model.synthetic import SyntheticScene

from conftest import ColourThresholdEngine, write_video

PERCENTILES = {"p50", "p90", "p99", "p999", "max", "mean"}


@pytest.fixture
def stand_in_engine(monkeypatch):
    """`open_engine` replaced by the deterministic stand-in: these tests are about the command, not the model."""
    import endofuse.realtime.engines as engines

    opened = []

    def fake_open_engine(checkpoint=None, backend="auto", device=None, model_name="tiny", **_):
        opened.append((checkpoint, backend, model_name))
        return ColourThresholdEngine((32, 40), threshold=0.7)

    monkeypatch.setattr(engines, "open_engine", fake_open_engine)
    return opened


@pytest.fixture(scope="module")
def video_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    scene = SyntheticScene(4, (96, 112))
    frames = [scene.frame(i / 30) for i in range(20)]
    write_video(folder / "wli.mp4", [f[0] for f in frames])
    write_video(folder / "nbi.mp4", [f[1] for f in frames])
    return folder / "wli.mp4", folder / "nbi.mp4"


def frame_count_and_size(path):
    capture, count, size = cv2.VideoCapture(str(path)), 0, None
    while (frame := capture.read()[1]) is not None:
        count, size = count + 1, frame.shape
    return count, size


def test_run_writes_the_video_and_the_report(stand_in_engine, video_pair, tmp_path, capsys):
    wli, nbi = video_pair
    out, report_path = tmp_path / "overlay.mp4", tmp_path / "report.json"
    rc = cli.main(["run", "--wli", str(wli), "--nbi", str(nbi), "--out", str(out), "--report", str(report_path),
                   "--warmup", "2"])
    assert rc == 0, capsys.readouterr().err
    assert frame_count_and_size(out) == (20, (96, 112, 3))
    report = json.loads(report_path.read_text())
    for key in ("frames", "paired", "stale_pairs", "nbi_missing", "dropped", "fps", "latency_ms", "stages_ms"):
        assert key in report
    assert (report["frames"], report["paired"], report["dropped"]) == (20, 20, 0)
    assert set(report["latency_ms"]) == PERCENTILES
    assert {"preprocess", "infer", "postprocess", "overlay"} <= set(report["stages_ms"])
    assert "20 frames" in capsys.readouterr().out


def test_run_synthetic_stops_after_frames(stand_in_engine, tmp_path, capsys):
    out = tmp_path / "synthetic.avi"
    assert cli.main(["run", "--wli", "synthetic", "--nbi", "synthetic", "--frames", "6", "--out", str(out)]) == 0
    assert frame_count_and_size(out) == (6, (480, 540, 3))
    assert stand_in_engine == [(None, "auto", "tiny")]  # no --checkpoint: the bundled demo weights


def truncated(folder, suffix: str, fourcc: str):
    """A real video cut in half: mp4 loses its index (cannot open), AVI stops decoding midway."""
    full = folder / f"full{suffix}"
    write_video(full, [np.full((40, 50, 3), 8 * i, np.uint8) for i in range(30)], fourcc=fourcc)
    cut = folder / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    return cut


FAULTS = {
    "missing": (lambda d: d / "missing.mp4", "no such file"),
    "unsupported": (lambda d: (d / "notes.mp4").write_text("not a video") and d / "notes.mp4", "cannot be opened"),
    "truncated-mp4": (lambda d: truncated(d, ".mp4", "mp4v"), "cannot be opened"),
    "truncated-avi": (lambda d: truncated(d, ".avi", "MJPG"), "truncated or corrupt"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("role", ["--wli", "--nbi"])
def test_bad_input_files_exit_with_one_line_naming_the_file(fault, role, stand_in_engine, video_pair, tmp_path,
                                                              capsys):
    make, reason = FAULTS[fault]
    bad = make(tmp_path)
    good = video_pair[0]
    args = {"--wli": good, "--nbi": good, role: bad}
    out = tmp_path / "out.mp4"
    rc = cli.main(["run", "--wli", str(args["--wli"]), "--nbi", str(args["--nbi"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(bad) in err and reason in err and ("WLI" if role == "--wli" else "NBI") in err


def test_display_without_gui_support_is_one_line(stand_in_engine, video_pair, capsys):
    if "GUI:                           NONE" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV has a GUI: a window would open")
    rc = cli.main(["run", "--wli", str(video_pair[0]), "--display"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "--display needs OpenCV with GUI support" in err


@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames must be >= 1"),
    (["--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["--report", "/no/such/folder/r.json"], "does not exist"),
    (["--out", "out.gif"], "unsupported extension"),
])
def test_bad_options_are_one_line(argv, message, stand_in_engine, video_pair, capsys):
    rc = cli.main(["run", "--wli", str(video_pair[0]), *argv])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and message in err, err


@pytest.fixture(scope="module")
def real_checkpoint_args(tmp_path_factory):
    """Real weights: the bundled demo weights when shipped, else a randomly initialised tiny checkpoint."""
    from endofuse.errors import EndofuseError
    from endofuse.model import build_model, demo_checkpoint_path, save_checkpoint

    try:
        demo_checkpoint_path()
        return []
    except EndofuseError:
        path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
        save_checkpoint(path, build_model("tiny"))
        return ["--checkpoint", str(path)]


@pytest.mark.slow
def test_ctrl_c_finalises_the_video_and_writes_the_report(real_checkpoint_args, tmp_path):
    out, report_path = tmp_path / "live.mp4", tmp_path / "report.json"
    cmd = [sys.executable, "-m", "endofuse", "run", "--wli", "synthetic", "--nbi", "synthetic", "--live",
           "--frames", "100000", "--engine", "torch", "--out", str(out), "--report", str(report_path),
           *real_checkpoint_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    partial = tmp_path / ".live.partial.mp4"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 20_000):
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    report = json.loads(report_path.read_text())
    count, size = frame_count_and_size(out)
    assert report["interrupted"] is True and count == report["frames"] > 0 and size == (480, 540, 3)
    assert not partial.exists()


def test_bench_writes_the_issue_json_keys_and_a_plot(stand_in_engine, tmp_path, capsys):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = cli.main(["bench", "--frames", "20", "--warmup", "2", "--ring", "3", "--paced-fps", "100",
                   "--json", str(out), "--plot", str(plot)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert {"model", "engine", "input_size", "frames", "engine_only", "modes", "efficiency"} <= set(result)
    assert set(result["engine_only"]) == {"fps", "latency_ms"} and set(result["modes"]) == {"max", "paced"}
    for mode in result["modes"].values():
        assert {"fps", "latency_ms", "stages_ms", "dropped", "stale_pairs", "nbi_missing"} <= set(mode)
        assert set(mode["latency_ms"]) == PERCENTILES
        assert mode["frames"] + mode["dropped"] == 22  # 20 measured + 2 warm-up, each shown or counted
    assert result["modes"]["max"]["dropped"] == 0
    assert result["efficiency"] == pytest.approx(result["modes"]["max"]["fps"] / result["engine_only"]["fps"])
    assert result["input_size"] == [32, 40] and stand_in_engine[0][1] == "auto"  # the same default as run
    assert cv2.imread(str(plot)).shape[0] > 200
    assert result["machine"]["cpus"] == os.cpu_count()  # numbers differ between CPUs: each run names its own
    printed = capsys.readouterr().out
    assert "| max |" in printed and f"machine: {result['machine']['cpu']}" in printed


def test_threads_reach_the_engine_and_the_bench_record(monkeypatch, tmp_path):
    import endofuse.realtime.engines as engines

    asked = []
    monkeypatch.setattr(engines, "open_engine", lambda *a, threads=None, **k: asked.append(threads)
                        or ColourThresholdEngine((32, 40), threshold=0.7))
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--threads", "1", "--frames", "10", "--warmup", "1", "--ring", "2",
                     "--paced-fps", "200", "--json", str(out)]) == 0
    assert asked == [1]
    assert json.loads(out.read_text())["engine_threads"] == {"threads": 1, "chosen_by": "--threads"}
    assert cli.main(["bench", "--threads", "0"]) != 0 and asked == [1]  # refused before anything opens
    assert cli.main(["run", "--wli", "synthetic", "--frames", "3", "--threads", "1"]) == 0 and asked == [1, 1]


@pytest.mark.slow
def test_the_readme_command_with_the_bundled_weights(tmp_path):
    """`endofuse run --wli synthetic --nbi synthetic --frames N --out --report`, as in the README, real engine."""
    from endofuse.errors import EndofuseError
    from endofuse.model import demo_checkpoint_path

    try:
        demo_checkpoint_path()
    except EndofuseError as exc:
        pytest.skip(f"demo weights not shipped yet: {exc}")
    out, report_path = tmp_path / "overlay.mp4", tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "endofuse", "run", "--wli", "synthetic", "--nbi", "synthetic",
                             "--frames", "12", "--out", str(out), "--report", str(report_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert frame_count_and_size(out) == (12, (480, 540, 3))
    assert report["frames"] == report["paired"] == 12 and "demo" in report["model"]
