"""`endofuse run --runtime holoscan` against the native runtime on the same video pair, bad inputs, Ctrl-C,
and the HoloHub-style `python -m endofuse.realtime.holoscan.app --config app.yaml`."""
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("holoscan") is None:
    pytest.skip("the [holoscan] extra is not installed", allow_module_level=True)

from endofuse.cli import main  # noqa: E402

from conftest import ColourThresholdEngine, spread_tiny_classifier, write_video  # noqa: E402

FRAMES = 12


@pytest.fixture(scope="module")
def video_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(0)
    for name in ("wli", "nbi"):
        images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(FRAMES)]
        for image in images:
            image[10:30, 15:45, 2] = 230  # something for the model to segment
        write_video(folder / f"{name}.avi", images, fourcc="MJPG")
    return folder / "wli.avi", folder / "nbi.avi"


def run_cli(*argv):
    return main(["run", *map(str, argv), "--engine", "onnxruntime", "--warmup", "2"])


def tiny_classifier(path):
    from endofuse.model.entrep_weights import save_classifier

    return save_classifier(path, spread_tiny_classifier())


def test_holoscan_run_matches_native_masks_frames_classes_and_report_keys(video_pair, tmp_path):
    wli, nbi = video_pair
    classifier = tiny_classifier(tmp_path / "classifier.pt")
    for runtime in ("native", "holoscan"):
        assert run_cli("--runtime", runtime, "--wli", wli, "--nbi", nbi, "--out", tmp_path / f"{runtime}.avi",
                       "--frames-dir", tmp_path / runtime, "--report", tmp_path / f"{runtime}.json",
                       "--classifier", classifier, "--stabilise", "off") == 0
    native, holo = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("native", "holoscan"))
    # the stabiliser stage and its "temporal" / "overlay" report keys are native-only so far (docs/pipeline.md)
    native_only = {"temporal", "overlay"}
    assert set(native) - native_only <= set(holo) and set(holo) - set(native) == {"runtime", "holoscan"}
    assert holo["classifier"] == native["classifier"] and sum(holo["classifier"]["class_counts"].values()) == FRAMES
    assert "classify" in holo["stages_ms"] and holo["nbi_dropped"] == native["nbi_dropped"] == 0
    assert holo["frames"] == native["frames"] == FRAMES and holo["paired"] == native["paired"]
    assert holo["holoscan"]["flow_tracking_ms"]  # one entry per tracked path
    video = cv2.VideoCapture(str(tmp_path / "holoscan.avi"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    for k in range(FRAMES):
        a = cv2.imread(str(tmp_path / "native" / f"mask_{k:06d}.png"))
        b = cv2.imread(str(tmp_path / "holoscan" / f"mask_{k:06d}.png"))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["missing video", "corrupt engine", "truncated video"])
def test_bad_input_is_one_line_naming_the_file(video_pair, tmp_path, capfd, case):
    wli, nbi = video_pair
    args = ["--wli", wli, "--nbi", nbi]
    if case == "missing video":
        args[1], named = tmp_path / "nope.avi", "nope.avi"
    elif case == "corrupt engine":
        (tmp_path / "bad.onnx").write_bytes(b"not a model" * 8)
        args += ["--checkpoint", tmp_path / "bad.onnx"]
        named = "bad.onnx"
    else:
        data = Path(wli).read_bytes()
        (tmp_path / "cut.avi").write_bytes(data[: int(len(data) * 0.6)])
        args[1], named = tmp_path / "cut.avi", "cut.avi"
    capfd.readouterr()
    assert run_cli("--runtime", "holoscan", *args, "--report", tmp_path / "r.json") == 1
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("endofuse") or "error" in line]
    assert len(err) == 1 and named in err[0], err
    if case == "truncated video":
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["complete"] is False and 0 < report["frames"] < FRAMES


@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_finalises_video_and_marks_report_interrupted(tmp_path, signum):
    out, report = tmp_path / "o.avi", tmp_path / "r.json"
    cmd = [sys.executable, "-m", "endofuse", "run", "--runtime", "holoscan", "--wli", "synthetic", "--nbi",
           "synthetic", "--frames", "100000", "--live", "--engine", "onnxruntime", "--out", str(out),
           "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / ".o.partial.avi").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)  # a few frames into the video
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["frames"] > 0
    video = cv2.VideoCapture(str(out))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == data["frames"]


def test_holohub_style_app_runs_from_its_yaml(video_pair, tmp_path, capfd):
    wli, nbi = video_pair
    config = tmp_path / "app.yaml"
    config.write_text(f"""
wli_source: {{source: "{wli}"}}
nbi_source: {{source: "{nbi}"}}
sync: {{channel_order: bgr}}
inference: {{backend: onnxruntime}}
overlay: {{alpha: 0.4, hud: false}}
recorder: {{out: "{tmp_path / 'o.avi'}", report: "{tmp_path / 'r.json'}", warmup_frames: 2}}
scheduler: {{kind: event, workers: 2}}
""")
    from endofuse.realtime.holoscan.app import main as app_main  # what `python -m ...app` runs

    assert app_main(["--config", str(config)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == FRAMES and report["holoscan"]["scheduler"] == "event"
    assert int(cv2.VideoCapture(str(tmp_path / "o.avi")).get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    (tmp_path / "typo.yaml").write_text(f'wli_source: {{source: "{wli}"}}\nsync: {{tolerence: 0.1}}\n')
    capfd.readouterr()
    assert app_main(["--config", str(tmp_path / "typo.yaml")]) == 1  # Holoscan alone would ignore the typo
    assert "config section 'sync': unknown key(s) tolerence" in capfd.readouterr().err
    assert app_main(["--config", str(tmp_path / "x.yaml")]) == 1
    err = capfd.readouterr().err.strip()
    assert err.endswith("no such file") and "x.yaml" in err and len(err.splitlines()) == 1


def test_example_config_and_holohub_metadata_are_valid(repo_root):
    from endofuse.realtime.holoscan.app import SECTIONS, load_config

    config = load_config(str(repo_root / "realtime" / "holoscan" / "app.yaml"))
    assert set(config) <= set(SECTIONS) and config["wli_source"]["source"] == "synthetic"
    for kind, folder in (("operator", "operators/endofuse"), ("application", "applications/endofuse_wli_nbi")):
        meta = json.loads((repo_root / "realtime" / "holoscan" / "holohub" / folder / "metadata.json").read_text())
        entry = meta[kind]
        required = {"name", "authors", "language", "version", "holoscan_sdk", "platforms", "tags", "requirements"}
        assert required <= set(entry) and entry["tags"][0] == "Healthcare AI"  # HoloHub's category comes first
        assert entry["holoscan_sdk"]["minimum_required_version"] == "4.5.0"
        import holoscan

        assert holoscan.__version__ in entry["holoscan_sdk"]["tested_versions"]


@pytest.mark.slow
def test_bench_both_runtimes_write_the_side_by_side_json(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--runtime", "both", "--frames", "12", "--warmup", "2", "--ring", "4",
                 "--schedulers", "greedy,event", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["modes"]) == {"max", "paced"} and set(result["holoscan"]) == {"greedy", "event"}
    for data in result["holoscan"].values():
        assert data["modes"]["max"]["frames"] == 12 + 2 and data["modes"]["max"]["dropped"] == 0
    first = result["side_by_side"]["rounds"][0]  # the single-pass results are the first round's
    assert first["holoscan greedy max"]["fps"] == result["holoscan"]["greedy"]["modes"]["max"]["fps"]
    assert result["scheduler_verdict"]["max"]["winner"] in ("greedy", "event")


def mode(fps, dropped, p99, threads, handoffs):
    return {"fps": fps, "dropped": dropped, "latency_ms": {"p99": p99}, "threads_used": threads,
            "handoffs_per_frame": handoffs}


def test_scheduler_verdict_ranks_on_throughput_then_drops_and_says_why():
    from endofuse.realtime.holoscan.bench import scheduler_list, scheduler_verdict

    holoscan = {"greedy": {"modes": {"max": mode(40.0, 0, 30.0, 1, 0.0), "paced": mode(28.0, 6, 40.0, 1, 0.0)}},
                "event": {"modes": {"max": mode(35.0, 0, 35.0, 2, 1.5), "paced": mode(30.0, 0, 50.0, 2, 1.5)}}}
    verdict = scheduler_verdict(holoscan)
    assert verdict["max"]["ranking"] == ["greedy", "event"]  # max: the higher pairs/s
    assert verdict["paced"]["ranking"] == ["event", "greedy"]  # paced: fewer dropped beats a lower p99
    assert "fewer threads (1 vs 2)" in verdict["max"]["why"] and "more threads" in verdict["paced"]["why"]
    # with rounds: the medians decide, and overlapping fps ranges are not a win
    side = {"summary": {"holoscan greedy max": {"fps_median": 38.0, "fps_range": [30.0, 45.0], "dropped_median": 0},
                        "holoscan event max": {"fps_median": 36.0, "fps_range": [33.0, 41.0], "dropped_median": 0}}}
    assert scheduler_verdict(holoscan, side)["max"]["why"].startswith("not separable")
    assert scheduler_list("all") == ["greedy", "event", "multi_thread"]
    with pytest.raises(Exception, match="unknown scheduler"):
        scheduler_list("greedy,multithread")


@pytest.mark.parametrize("scheduler", ["greedy", "event", "multi_thread"])
def test_every_scheduler_delivers_every_frame_of_a_recording(scheduler):
    from endofuse.realtime.holoscan.app import EndofuseApp, run_app
    from endofuse.realtime.input.sources import MemorySource

    images = [np.full((24, 32, 3), 20 * k, np.uint8) for k in range(6)]
    app = EndofuseApp({"wli_source": {"source": MemorySource(images, "w", 30.0, loops=None), "frames": 40},
                       "nbi_source": {"source": MemorySource(images, "n", 30.0, loops=None)},
                       "recorder": {"warmup_frames": 0}, "scheduler": {"kind": scheduler, "workers": 2}},
                      engine=ColourThresholdEngine((16, 16)))
    report = run_app(app)
    assert report["frames"] == 40 and report["paired"] == 40 and report["holoscan"]["scheduler"] == scheduler
    threads, handoffs = report["holoscan"]["threads_used"], report["holoscan"]["handoffs_per_frame"]
    if scheduler == "greedy":  # one thread runs every operator: a frame never changes threads
        assert threads == 1 and handoffs == 0
    else:  # source -> sync -> inference -> overlay: at most 3 changes per frame, on at most 2 workers
        assert 1 <= threads <= 2 and 0 <= handoffs <= 3
