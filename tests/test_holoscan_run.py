"""`endofuse run --runtime holoscan` against the native runtime on the same video pair, bad inputs, recordings
at two frame rates, and the HoloHub-style `python -m endofuse.realtime.holoscan.app --config app.yaml`."""
import importlib.util
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

if importlib.util.find_spec("holoscan") is None:
    pytest.skip("the [holoscan] extra is not installed", allow_module_level=True)

from endofuse.cli import main  # noqa: E402

from conftest import (  # noqa: E402
    ColourThresholdEngine,
    brute_force,
    child_env,
    spread_tiny_classifier,
    write_video,
)

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
                       "--classifier", classifier) == 0  # the default stabiliser: flow
    native, holo = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("native", "holoscan"))
    assert set(native) <= set(holo) and set(holo) - set(native) == {"runtime", "holoscan"}
    assert holo["temporal"] == native["temporal"] and holo["temporal"]["settings"]["stabilise"] == "flow"
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


# A truncated video, full disks and signals: tests/test_faults_run.py runs those on both runtimes.
@pytest.mark.parametrize("case", ["missing video", "corrupt engine"])
def test_bad_input_is_one_line_naming_the_file(video_pair, tmp_path, capfd, case):
    wli, nbi = video_pair
    args = ["--wli", wli, "--nbi", nbi]
    if case == "missing video":
        args[1], named = tmp_path / "nope.avi", "nope.avi"
    else:
        (tmp_path / "bad.onnx").write_bytes(b"not a model" * 8)
        args += ["--checkpoint", tmp_path / "bad.onnx"]
        named = "bad.onnx"
    capfd.readouterr()
    assert run_cli("--runtime", "holoscan", *args, "--report", tmp_path / "r.json") == 1
    err = [line for line in capfd.readouterr().err.splitlines() if line.startswith("endofuse") or "error" in line]
    assert len(err) == 1 and named in err[0], err


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


# -- recordings at two frame rates: lossless, paired as the reference, and the graph ends --------------------
def timed_memory_source(times: list[float], name: str):
    """A recording whose frames carry their own times (as a variable-frame-rate file's do)."""
    from endofuse.realtime.input.sources import MemorySource

    class TimedSource(MemorySource):
        def next_frame(self):
            frame = super().next_frame()
            if frame is not None:
                frame.sync_time = self._epoch + times[frame.index]
            return frame

    images = [np.full((24, 32, 3), k % 256, np.uint8) for k in range(len(times))]
    return TimedSource(images, name, fps=(len(times) - 1) / (times[-1] - times[0]))


def steady(fps: float, frames: int) -> list[float]:
    return [k / fps for k in range(frames)]


def variable(frames: int, seed: int = 0) -> list[float]:
    """Frame intervals anywhere between 1/60 and 1/20 s (a variable-frame-rate recording)."""
    return np.concatenate([[0.0], np.cumsum(np.random.default_rng(seed).uniform(1 / 60, 1 / 20, frames - 1))]).tolist()


TIMELINES = {  # WLI times, NBI times
    "30 vs 25 fps": (steady(30, 60), steady(25, 50)),
    "25 vs 30 fps": (steady(25, 50), steady(30, 60)),
    "30 vs 24 fps": (steady(30, 60), steady(24, 48)),
    "variable WLI vs 25 fps": (variable(60), steady(25, 60)),
    "30 fps vs variable NBI": (steady(30, 45), variable(50, seed=1)),
    "NBI ends early": (steady(30, 60), steady(25, 20)),
}


@pytest.mark.timeout(60)  # a graph whose sources wait on each other must fail here, not hang CI
@pytest.mark.parametrize("scheduler", ["greedy", "event", "multi_thread"])
@pytest.mark.parametrize("timeline", list(TIMELINES))
def test_recordings_at_any_two_frame_rates_pair_losslessly_on_every_scheduler(timeline, scheduler):
    from endofuse.realtime.holoscan.app import EndofuseApp, run_app
    from endofuse.realtime.output.sinks import CallbackSink

    wli_times, nbi_times = TIMELINES[timeline]
    wli, nbi = timed_memory_source(wli_times, "w"), timed_memory_source(nbi_times, "n")
    results = []
    app = EndofuseApp({"wli_source": {"source": wli}, "nbi_source": {"source": nbi},
                       "recorder": {"warmup_frames": 0}, "scheduler": {"kind": scheduler, "workers": 2},
                       "tracking": {"enabled": False}},
                      engine=ColourThresholdEngine((16, 16)), sinks=[CallbackSink(results.append)])
    report = run_app(app)
    assert [r.index for r in results] == list(range(len(wli_times)))  # every WLI frame, in order
    policy = app.sync_op.sync.policy
    for result, t in zip(results, wli_times, strict=True):
        status, best = brute_force(t, nbi_times, policy)
        assert (result.status, result.nbi_index) == (status, None if best is None else nbi_times.index(best)), t
    assert report["nbi_dropped"] == 0 and report["sync"]["nbi_too_late"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nbi_kind", ["video", "image folder"])
def test_run_of_a_30_fps_wli_and_a_25_fps_nbi_ends_and_pairs_as_natively(nbi_kind, stand_in_engine, tmp_path):
    from endofuse.model.synthetic import SyntheticScene

    scene = SyntheticScene(3, (48, 64))
    write_video(tmp_path / "wli.mp4", [scene.frame(k / 30)[0] for k in range(30)], fps=30)
    nbi_images = [scene.frame(j / 25)[1] for j in range(25)]
    if nbi_kind == "video":
        nbi, extra = tmp_path / "nbi.mp4", []
        write_video(nbi, nbi_images, fps=25)
    else:  # a folder is played at --fps; the WLI video keeps its own 30 fps
        nbi, extra = tmp_path / "nbi", ["--fps", "25"]
        nbi.mkdir()
        for j, image in enumerate(nbi_images):
            cv2.imwrite(str(nbi / f"{j:03d}.png"), image)
    for runtime in ("native", "holoscan"):
        assert main(["run", "--runtime", runtime, "--wli", str(tmp_path / "wli.mp4"), "--nbi", str(nbi), *extra,
                     "--report", str(tmp_path / f"{runtime}.json")]) == 0
    native, holo = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("native", "holoscan"))
    assert holo["frames"] == native["frames"] == 30
    for key in ("paired", "stale_pairs", "nbi_missing", "nbi_dropped"):
        assert holo[key] == native[key], key
    assert holo["skew_mean_ms"] == pytest.approx(native["skew_mean_ms"], abs=1e-6)  # the same NBI frames


HANDLERS_DURING_A_RUN = textwrap.dedent("""
    import ctypes, signal
    import numpy as np
    from endofuse.realtime.holoscan.app import EndofuseApp, run_app
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.output.sinks import CallbackSink
    from conftest import ColourThresholdEngine

    class SigAction(ctypes.Structure):  # Linux x86-64 / aarch64 `struct sigaction`
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]

    def installed(signum):
        action = SigAction()
        ctypes.CDLL(None).sigaction(signum, None, ctypes.byref(action))
        return action.handler

    python_handler = installed(signal.SIGINT)  # Python's C handler, which runs the Python-level ones
    in_charge = []
    def check(result):
        if result.index == 15:  # half a second into the run
            in_charge.extend(installed(s) == python_handler for s in (signal.SIGINT, signal.SIGTERM))
    source = MemorySource([np.zeros((16, 16, 3), np.uint8)], "w", 30.0, loops=None)
    app = EndofuseApp({"wli_source": {"source": source, "frames": 20, "live": True}},
                      engine=ColourThresholdEngine((16, 16)), sinks=[CallbackSink(check)])
    run_app(app)
    print(in_charge)
""")


@pytest.mark.timeout(120)
def test_endofuse_signal_handlers_are_in_charge_while_the_graph_runs():
    # Holoscan installs its own SIGINT/SIGTERM handler on a process's first run; it interrupts the graph
    # mid-frame and may log GXF errors (a second stderr line). It must not be the one that handles a signal.
    proc = subprocess.run([sys.executable, "-c", HANDLERS_DURING_A_RUN], capture_output=True, text=True,
                          env=child_env(HOLOSCAN_LOG_LEVEL="ERROR"), timeout=110)  # a fresh process: Holoscan
    # installs its handler only once per process
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[True, True]"
