"""A video file's frames are timed by the container's own timestamps where they are usable (variable frame
rates pair by the true times), by the documented 30 fps where a file's durations are 0, and the report says
which timing each stream got."""
import csv
import importlib.util
import json

import numpy as np
import pytest

from endofuse import cli
from endofuse.realtime.input.frame_times import mp4_frame_times
from endofuse.realtime.input.sources import DEFAULT_FPS, VideoFileSource
from endofuse.realtime.pairing.sync import SyncPolicy

from conftest import brute_force, write_mkv, write_video, write_zero_duration_mp4

SIZE = (48, 64)


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.full((*SIZE, 3), rng.integers(0, 256), np.uint8) for _ in range(count)]


def variable_times_ms(count: int, seed: int = 0) -> list[int]:
    """Frame intervals from 10 to 90 ms: average ~20 fps, but never two alike for long."""
    steps = np.random.default_rng(seed).integers(10, 91, count - 1)
    return [0, *np.cumsum(steps).tolist()]


def sync_times(source) -> list[float]:
    source.open()
    source.start(0.0, paced=False)
    try:
        return [frame.sync_time for frame in source]
    finally:
        source.close()


def test_a_variable_frame_rate_file_is_timed_by_its_timestamps(tmp_path):
    times = variable_times_ms(40)
    write_mkv(tmp_path / "vfr.mkv", frames(40), times)
    source = VideoFileSource(tmp_path / "vfr.mkv", "WLI")
    assert sync_times(source) == pytest.approx([t / 1000 for t in times], abs=1e-6)
    assert source.timing == "container"


def test_an_mp4_with_zero_frame_durations_plays_at_the_fallback_rate(tmp_path):
    write_zero_duration_mp4(tmp_path / "zero.mp4", frames(12))
    assert mp4_frame_times(tmp_path / "zero.mp4") == [0.0] * 12  # the file really says 0
    source = VideoFileSource(tmp_path / "zero.mp4", "NBI")
    assert sync_times(source) == pytest.approx([k / DEFAULT_FPS for k in range(12)])
    assert source.timing == "fallback-fps" and source.fps == DEFAULT_FPS


def test_a_constant_rate_mp4_reads_its_sample_table(tmp_path):
    write_video(tmp_path / "cfr.mp4", frames(10), fps=25)
    assert mp4_frame_times(tmp_path / "cfr.mp4") == pytest.approx([k / 25 for k in range(10)])
    source = VideoFileSource(tmp_path / "cfr.mp4")
    assert sync_times(source) == pytest.approx([k / 25 for k in range(10)]) and source.timing == "container"
    assert source.fps == pytest.approx(25)
    assert mp4_frame_times(tmp_path / "nothing.mp4") is None
    write_mkv(tmp_path / "x.mkv", frames(2), [0, 40])
    assert mp4_frame_times(tmp_path / "x.mkv") is None  # not an MP4: the decoder's timestamps decide


def read_log(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("nbi_kind", ["vfr mkv", "zero-duration mp4"])
def test_run_pairs_a_variable_rate_wli_by_its_true_times(nbi_kind, stand_in_engine, tmp_path, capsys):
    wli_ms = variable_times_ms(50, seed=3)
    write_mkv(tmp_path / "wli.mkv", frames(50, 1), wli_ms)
    if nbi_kind == "vfr mkv":
        nbi_ms = variable_times_ms(45, seed=4)
        write_mkv(tmp_path / "nbi.mkv", frames(45, 2), nbi_ms)
        nbi, nbi_times, nbi_timing = tmp_path / "nbi.mkv", [t / 1000 for t in nbi_ms], "container"
    else:
        write_zero_duration_mp4(tmp_path / "nbi.mp4", frames(30, 2))
        nbi, nbi_times, nbi_timing = tmp_path / "nbi.mp4", [k / DEFAULT_FPS for k in range(30)], "fallback-fps"
    log, report = tmp_path / "log.csv", tmp_path / "report.json"
    assert cli.main(["run", "--wli", str(tmp_path / "wli.mkv"), "--nbi", str(nbi), "--log", str(log),
                     "--report", str(report), "--warmup", "0"]) == 0, capsys.readouterr().err
    rows = read_log(log)
    assert [int(r["frame"]) for r in rows] == list(range(50))
    policy = SyncPolicy.for_fps(DEFAULT_FPS)  # a Matroska file announces no rate: the WLI period is 1/30 s
    for row, t_ms in zip(rows, wli_ms, strict=True):
        status, best = brute_force(t_ms / 1000, nbi_times, policy)
        assert float(row["time_s"]) == pytest.approx(t_ms / 1000, abs=1e-4)
        assert (row["status"], row["nbi_frame"]) == (status, "" if best is None else str(nbi_times.index(best)))
        if status == "paired":  # fused pairs at most half a WLI frame apart, in truth
            assert abs(best - t_ms / 1000) <= 0.5 / DEFAULT_FPS + 1e-9
    assert json.loads(report.read_text())["timing"] == {"wli": "container", "nbi": nbi_timing}


def test_the_report_names_nominal_and_endoscope_timing(stand_in_engine, tmp_path):
    report = tmp_path / "report.json"
    assert cli.main(["run", "--wli", "synthetic", "--nbi", "synthetic", "--frames", "3", "--report",
                     str(report)]) == 0
    assert json.loads(report.read_text())["timing"] == {"wli": "nominal-fps", "nbi": "nominal-fps"}
    write_mkv(tmp_path / "scope.mkv", frames(6), [0, 30, 70, 100, 150, 160])
    runtimes = ["native"] + (["holoscan"] if importlib.util.find_spec("holoscan") else [])
    for runtime in runtimes:
        assert cli.main(["run", "--runtime", runtime, "--endoscope", str(tmp_path / "scope.mkv"), "--report",
                         str(report)]) == 0
        assert json.loads(report.read_text())["timing"] == {"endoscope": "container"}, runtime


@pytest.mark.timeout(120)
def test_the_holoscan_runtime_times_and_reports_as_natively(stand_in_engine, tmp_path):
    if importlib.util.find_spec("holoscan") is None:
        pytest.skip("the [holoscan] extra is not installed")
    write_mkv(tmp_path / "wli.mkv", frames(30, 1), variable_times_ms(30, seed=5))
    write_zero_duration_mp4(tmp_path / "nbi.mp4", frames(20, 2))
    reports = {}
    for runtime in ("native", "holoscan"):
        out = tmp_path / f"{runtime}.json"
        assert cli.main(["run", "--runtime", runtime, "--wli", str(tmp_path / "wli.mkv"), "--nbi",
                         str(tmp_path / "nbi.mp4"), "--report", str(out)]) == 0
        reports[runtime] = json.loads(out.read_text())
    assert reports["holoscan"]["timing"] == reports["native"]["timing"] == {"wli": "container",
                                                                             "nbi": "fallback-fps"}
    for key in ("frames", "paired", "stale_pairs", "nbi_missing"):
        assert reports["holoscan"][key] == reports["native"][key], key
    assert reports["holoscan"]["skew_mean_ms"] == pytest.approx(reports["native"]["skew_mean_ms"], abs=1e-6)
