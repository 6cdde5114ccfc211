"""The OpenVINO engine against the torch model: every precision, IR export + metadata, caches, `auto`, telemetry."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from endofuse import cli
from endofuse.errors import EndofuseError
from endofuse.realtime.engines import factory, open_engine, resolve_backend
from endofuse.realtime.engines.onnx_export import missing_nbi_path_for

from conftest import SAMPLE_DATA, SIZE, random_pair, torch_logits

pytest.importorskip("openvino")

# Per precision: max |logits - torch| as a fraction of the torch logits' spread, and the least
# fraction of pixels whose argmax (mask) agrees with torch. bf16 keeps 8 mantissa bits (~0.4 %
# per op); INT8 is calibrated on the frames it is scored on here, as a user would on their data.
TOLERANCES = {"f32": (1e-4, 1.0), "bf16": (0.05, 0.97), "int8": (0.2, 0.9)}


def cpu_has_bf16() -> bool:
    """Independent of OpenVINO: the CPU flags the kernel reports."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


@pytest.fixture
def cache(tmp_path, monkeypatch, exported):
    """A private endofuse cache holding the session's ONNX export (so nothing is exported again)."""
    monkeypatch.setenv("ENDOFUSE_CACHE", str(exported.cache))
    return exported.cache


def real_or_synthetic_frames(sample_dir: Path | None, count: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    from endofuse.realtime.engines.openvino_export import calibration_batches

    return calibration_batches(sample_dir, count, (SIZE, SIZE))


@pytest.fixture(scope="module")
def sample_or_none() -> Path | None:
    return SAMPLE_DATA if (SAMPLE_DATA / "Training.csv").is_file() else None


@pytest.mark.parametrize("precision", ["f32", "bf16", "int8"])
def test_every_precision_matches_torch_on_frames(exported, cache, sample_or_none, precision):
    engine = open_engine(exported.onnx_path, backend="openvino", precision=precision, calibration=sample_or_none)
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units; OpenVINO runs f32 (checked by the auto test)")
    assert engine.name == f"openvino-{precision}" and engine.precision == precision
    max_error, min_agreement = TOLERANCES[precision]
    for wli, nbi in real_or_synthetic_frames(sample_or_none):
        for second in (nbi, None):
            expected, got = torch_logits(exported.model, wli, second), engine.infer(wli, second)
            assert got.shape == expected.shape and got.dtype == np.float32
            spread = float(expected.max() - expected.min())
            assert np.abs(got - expected).max() <= max_error * spread, (precision, second is None)
            assert (got.argmax(1) == expected.argmax(1)).mean() >= min_agreement


def test_auto_precision_is_what_the_cpu_has(exported, cache):
    engine = open_engine(exported.onnx_path, backend="openvino")
    expected = "bf16" if cpu_has_bf16() else "f32"
    assert engine.precision == engine.inference_precision == expected
    assert engine.name == f"openvino-{expected}"
    assert engine.input_size == (SIZE, SIZE) and engine.num_classes == 2 and engine.fixed_batch is None
    assert engine.model_label == "tiny (tiny.pt)" and engine.supports_missing_nbi
    wli, nbi = random_pair(batch=2)
    assert engine.infer(wli, nbi).shape == (2, 2, SIZE, SIZE)  # dynamic batch from the export


def test_auto_backend_order(monkeypatch, tmp_path):
    monkeypatch.setattr(factory, "tensorrt_available", lambda: False)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert resolve_backend("auto", tmp_path / "m.pt") == "openvino"
    assert resolve_backend("auto", tmp_path / "m.xml") == "openvino"
    assert resolve_backend("auto", tmp_path / "m.pt", device="cuda") == "onnxruntime"
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert resolve_backend("auto", tmp_path / "m.pt") == "onnxruntime"
    monkeypatch.setattr(factory, "tensorrt_available", lambda: True)
    assert resolve_backend("auto", tmp_path / "m.pt") == "tensorrt"
    with pytest.raises(EndofuseError, match="OpenVINO IR; it runs only with backend 'openvino'"):
        resolve_backend("onnxruntime", tmp_path / "m.xml")


def test_auto_keeps_onnxruntime_int8_files_on_onnxruntime(monkeypatch, tmp_path):
    monkeypatch.setattr(factory, "tensorrt_available", lambda: False)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    proto = _foreign_onnx()
    onnx.helper.set_model_props(proto, {"precision": "int8"})
    onnx.save(proto, str(tmp_path / "q.onnx"))
    assert resolve_backend("auto", tmp_path / "q.onnx") == "onnxruntime"


def test_export_cli_writes_ir_with_metadata_checked_on_open(exported, cache, reuse_export, tmp_path, capsys):
    out = tmp_path / "m.xml"
    assert cli.main(["export", "--checkpoint", str(exported.checkpoint), "--format", "openvino",
                     "--precision", "f32", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    for path in (out, missing_nbi_path_for(out)):
        assert path.is_file() and path.with_suffix(".bin").is_file()
    engine = open_engine(out)  # auto: an IR opens with OpenVINO at the precision it was exported for
    assert engine.name == "openvino-f32"
    onnx_meta = {p.key: p.value for p in onnx.load(str(exported.onnx_path)).metadata_props}
    for key in ("model_name", "img_size", "num_classes", "model_label", "source_sha256", "endofuse_engine_format"):
        assert engine.metadata[key] == onnx_meta[key], key
    assert engine.metadata["precision"] == "f32" and engine.metadata["variant"] == "fused"
    wli, nbi = random_pair(batch=2, seed=3)
    for second in (nbi, None):
        np.testing.assert_allclose(engine.infer(wli, second), torch_logits(exported.model, wli, second),
                                   atol=1e-4, rtol=0)


def _write_ir(exported, tmp_path: Path, precision: str = "f32") -> Path:
    from endofuse.realtime.engines.openvino_export import onnx_to_ir

    return onnx_to_ir(exported.onnx_path, tmp_path / "m.xml", precision, log=lambda line: None)


def _set_rt_info(path: Path, **values: str) -> None:
    from endofuse.realtime.engines.openvino_env import import_openvino

    ov = import_openvino()
    model = ov.Core().read_model(str(path))
    for key, value in values.items():
        model.set_rt_info(value, ["endofuse", key])
    tmp = path.with_name("rewritten.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)


def _foreign_onnx() -> onnx.ModelProto:
    """A valid ONNX model with the right input names that no endofuse export wrote."""
    h = onnx.helper
    value = lambda name: h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, 3, SIZE, SIZE])  # noqa: E731
    graph = h.make_graph([h.make_node("Add", ["wli", "nbi"], ["logits"])], "g", [value("wli"), value("nbi")],
                         [value("logits")])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_ir_of_another_config_or_format_is_refused(exported, cache, tmp_path):
    path = _write_ir(exported, tmp_path)
    _set_rt_info(missing_nbi_path_for(path), model_name="small", source_sha256="0" * 64)
    with pytest.raises(EndofuseError, match=r"m\.missing-nbi\.xml does not match .*m\.xml \(source_sha256"):
        open_engine(path)
    _set_rt_info(path, endofuse_engine_format="0", endofuse_version="0.0.1")
    with pytest.raises(EndofuseError, match=r"m\.xml has engine format 0 \(endofuse 0\.0\.1\)"):
        open_engine(path)


@pytest.mark.parametrize("part", [".bin", ".xml"])
def test_truncated_ir_names_the_file(exported, cache, tmp_path, part):
    path = _write_ir(exported, tmp_path)
    target = path.with_suffix(part)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(EndofuseError, match=r"model file .*m\.xml cannot be read by OpenVINO") as info:
        open_engine(path)
    assert "\n" not in str(info.value)


def test_foreign_onnx_and_missing_bin_are_refused(tmp_path):
    onnx.save(_foreign_onnx(), str(tmp_path / "foreign.onnx"))
    with pytest.raises(EndofuseError, match=r"foreign\.onnx was not written by `endofuse export`"):
        open_engine(tmp_path / "foreign.onnx", backend="openvino")
    (tmp_path / "lonely.xml").write_text("<net/>")
    with pytest.raises(EndofuseError, match=r"lonely\.xml has no weights file lonely\.bin"):
        open_engine(tmp_path / "lonely.xml")


def test_compiled_and_int8_caches_are_reused(exported, cache, sample_or_none, monkeypatch):
    from endofuse.realtime.engines import openvino_export
    from endofuse.realtime.engines.openvino_engine import compiled_cache_dir

    # Quantised and compiled once (the parity test above already did, with the same calibration frames).
    open_engine(exported.onnx_path, backend="openvino-int8", calibration=sample_or_none)
    blobs = sorted(compiled_cache_dir("int8").glob("*.blob"))
    assert blobs, "OpenVINO wrote no compiled-model blob into the cache"
    monkeypatch.setattr(openvino_export, "quantize_ir", lambda *a, **k: pytest.fail("INT8 IR was not reused"))
    again = open_engine(exported.onnx_path, backend="openvino-int8", calibration=sample_or_none)
    assert again.name == "openvino-int8"
    assert sorted(compiled_cache_dir("int8").glob("*.blob")) == blobs  # nothing compiled anew
    with pytest.raises(EndofuseError, match="is an INT8 model; open it with precision 'int8'"):
        open_engine(again.path, backend="openvino", precision="f32")


def test_a_cached_blob_never_serves_another_precision(exported, cache):
    """OpenVINO's blob key leaves out the precision hint; a bf16 open must still run bf16, not the f32 blob."""
    from endofuse.realtime.engines.openvino_engine import OpenVinoEngine

    wli, nbi = random_pair(seed=5)
    expected = {p: OpenVinoEngine(exported.onnx_path, precision=p, cache=False).infer(wli, nbi)
                for p in ("f32", "bf16")}
    for precision in ("f32", "bf16", "f32", "bf16"):  # each open finds the other precision's blob in the cache
        got = open_engine(exported.onnx_path, backend="openvino", precision=precision).infer(wli, nbi)
        np.testing.assert_array_equal(got, expected[precision])


def test_set_threads_recompiles_both_graphs_with_the_same_results(exported, cache):
    from endofuse.realtime.engines.openvino_engine import OpenVinoEngine

    wli, nbi = random_pair(seed=6)
    engine = OpenVinoEngine(exported.onnx_path, precision="f32", threads=2)
    # Reference: an engine compiled with one thread from the start.
    reference = OpenVinoEngine(exported.onnx_path, precision="f32", threads=1, cache=False)
    assert engine.threads == 2 and engine.supports_missing_nbi
    engine.set_threads(1)
    assert engine.threads == 1 and int(engine.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    np.testing.assert_allclose(engine.infer(wli, nbi), reference.infer(wli, nbi), rtol=0, atol=1e-5)
    np.testing.assert_allclose(engine.infer(wli, None), reference.infer(wli, None), rtol=0, atol=1e-5)
    with pytest.raises(EndofuseError, match="OpenVINO threads 0: must be a whole number from 1"):
        engine.set_threads(0)


PINNING_PROBE = textwrap.dedent("""
    import json, os, sys, threading, time
    from pathlib import Path
    import numpy as np

    def pinned_threads_while(run, seconds, first=False):
        # CPU lists narrower than this process's that any thread had while run() loops (from /proc)
        allowed, seen, stop = os.sched_getaffinity(0), set(), threading.Event()
        def loop():
            while not stop.is_set():
                run()
        worker = threading.Thread(target=loop)
        worker.start()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end and not (first and seen):
                for task in Path("/proc/self/task").iterdir():
                    try:
                        line = next(x for x in (task / "status").read_text().splitlines()
                                    if x.startswith("Cpus_allowed_list"))
                    except (OSError, StopIteration):
                        continue
                    cpus = set()
                    for part in line.split()[1].split(","):
                        low, _, high = part.partition("-")
                        cpus |= set(range(int(low), int(high or low) + 1))
                    if cpus < allowed:
                        seen.add(line.split()[1])
        finally:
            stop.set()
            worker.join()
        return sorted(seen)

    from endofuse.realtime.engines.openvino_engine import OpenVinoEngine
    from endofuse.realtime.engines.openvino_env import openvino_core

    path, size = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    wli, nbi = (rng.random((1, 3, size, size), dtype=np.float32) for _ in range(2))
    if sys.argv[3] == "openvino-pinned":  # the same model compiled the way OpenVINO pins
        core = openvino_core()
        model = core.compile_model(core.read_model(path), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_NUM_THREADS": "1", "ENABLE_CPU_PINNING": "YES"})
        seen = pinned_threads_while(lambda: model({model.inputs[0]: wli, model.inputs[1]: nbi}), 3.0, True)
    else:
        engine = OpenVinoEngine(path, precision="f32", threads=1, cache=False)
        seen = pinned_threads_while(lambda: engine.infer(wli, nbi), 1.5)
    print(json.dumps(seen))
""")


def pinned_cpu_lists(onnx_path, how: str) -> list[str]:
    """In a fresh process (OpenVINO pins per process): the narrowed CPU lists its threads had."""
    result = subprocess.run([sys.executable, "-c", PINNING_PROBE, str(onnx_path), str(SIZE), how],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell pinned from free")
def test_an_engine_on_fewer_threads_than_cores_is_not_pinned(exported, cache):
    """OpenVINO pins a LATENCY engine's inference thread to the first CPUs: N one-thread engines in N
    processes (rooms, server replicas) then all share CPU 0. Pinning only for an engine on every core."""
    from endofuse.realtime.engines.openvino_engine import OpenVinoEngine
    from endofuse.realtime.engines.ort_engine import physical_cores

    one = OpenVinoEngine(exported.onnx_path, precision="f32", threads=1, cache=False)
    assert one.compiled.get_property("ENABLE_CPU_PINNING") is False
    if physical_cores() == len(os.sched_getaffinity(0)):  # no hyper-thread siblings: every core, pinned
        every = OpenVinoEngine(exported.onnx_path, precision="f32", threads=physical_cores(), cache=False)
        assert every.compiled.get_property("ENABLE_CPU_PINNING") is True
    # in behaviour: the sampler sees OpenVINO's pinning, and none while endofuse's engine computes
    assert pinned_cpu_lists(exported.onnx_path, "openvino-pinned"), "the sampler should see OpenVINO's pinning"
    assert pinned_cpu_lists(exported.onnx_path, "endofuse") == []


def test_pipeline_runs_end_to_end_on_openvino(exported, cache, tmp_path, capsys):
    """`endofuse run --engine openvino`: every frame segmented and the report names the precision."""
    out, report_path = tmp_path / "overlay.avi", tmp_path / "report.json"
    assert cli.main(["run", "--checkpoint", str(exported.onnx_path), "--engine", "openvino", "--wli", "synthetic",
                     "--nbi", "synthetic", "--frames", "8", "--out", str(out), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    expected = "openvino-bf16" if cpu_has_bf16() else "openvino-f32"
    assert report["engine"] == expected and report["frames"] == 8 and report["dropped"] == 0
    assert expected in capsys.readouterr().out


TELEMETRY_PROBE = textwrap.dedent("""
    import json, multiprocessing, os, socket, sys, urllib.request
    attempts = []
    def record(kind):
        def blocked(*args, **kwargs):
            attempts.append(kind)
            raise OSError("network blocked by the telemetry test")
        return blocked
    socket.socket.connect = record("socket.connect")
    socket.create_connection = record("socket.create_connection")
    multiprocessing.Process.start = record("multiprocessing.Process.start")  # how GA4 sends on Linux
    _request_init = urllib.request.Request.__init__
    def request_init(self, url, *args, **kwargs):
        attempts.append("urllib.request.Request " + str(url).split("?")[0])
        _request_init(self, url, *args, **kwargs)
    urllib.request.Request.__init__ = request_init
    mode, onnx_path, out_dir = sys.argv[1:4]
    if mode == "preimported":
        import openvino_telemetry  # the user's code loaded it before endofuse
    if mode == "control":
        import nncf  # no endofuse: the libraries' own behaviour
    else:
        import numpy as np
        from endofuse.realtime.engines import open_engine
        from endofuse.realtime.engines.openvino_env import import_openvino
        from endofuse.realtime.engines.openvino_export import onnx_to_ir, quantize_ir
        xml = onnx_to_ir(onnx_path, out_dir + "/m.xml", "f32", log=lambda line: None)  # IR export
        open_engine(xml).infer(np.zeros((1, 3, 32, 32), np.float32), None)  # compile + infer
        ov = import_openvino()  # NNCF quantisation (its telemetry-tracked entry point) of a one-conv model
        x = ov.opset13.parameter([1, 3, 8, 8], ov.Type.f32, name="x")
        conv = ov.opset13.convolution(x, ov.opset13.constant(np.ones((4, 3, 3, 3), np.float32)), [1, 1],
                                      [0, 0], [0, 0], [1, 1])
        quantize_ir(ov.Model([conv], [x]), [{"x": np.ones((1, 3, 8, 8), np.float32)}])
    print(json.dumps({"attempts": attempts,
                      "loaded": sys.modules.get("openvino_telemetry") is not None}))
""")


def _probe(mode: str, onnx_path: Path, home: Path, cache_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI", "NNCF_DEV", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), ENDOFUSE_CACHE=str(cache_dir))
    done = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE, mode, str(onnx_path), str(cache_dir)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _assert_telemetry_silent(exported, tmp_path, modes):
    control_home = tmp_path / "control"
    control_home.mkdir()
    control = _probe("control", exported.onnx_path, control_home, exported.cache)
    # The reference: plain `import nncf` assumes consent and writes a client id into ~/intel.
    assert (control_home / "intel" / "openvino_ga_cid").is_file() and control["loaded"]
    for mode in modes:
        home = tmp_path / mode
        home.mkdir()
        (tmp_path / f"cache-{mode}").mkdir()
        result = _probe(mode, exported.onnx_path, home, tmp_path / f"cache-{mode}")
        assert result["attempts"] == [], (mode, result)
        assert not (home / "intel").exists(), (mode, sorted(p.name for p in (home / "intel").iterdir()))
        assert result["loaded"] == (mode == "preimported")


def test_openvino_and_nncf_telemetry_never_records_or_sends(exported, tmp_path):
    """Export, infer and quantise (NNCF) in a fresh process with an empty HOME: no client-id files, no send."""
    _assert_telemetry_silent(exported, tmp_path, ["endofuse"])


@pytest.mark.slow
def test_telemetry_loaded_before_endofuse_is_silenced(exported, tmp_path):
    """The user imported openvino_telemetry first: endofuse neutralises it in place."""
    _assert_telemetry_silent(exported, tmp_path, ["preimported"])


SIGNAL_AFTER_TWO_ENGINES = textwrap.dedent("""
    import os, signal, sys
    from endofuse.realtime.engines.openvino_engine import OpenVinoEngine

    first = OpenVinoEngine(sys.argv[1], cache=False)
    second = OpenVinoEngine(sys.argv[1], cache=False)
    del first, second  # freed in the order opened, as when the demo or a benchmark moves on to the next engine
    signal.signal(signal.SIGTERM, lambda signum, frame: print("handled"))
    os.kill(os.getpid(), signal.SIGTERM)
    print("alive")
""")


def test_a_signal_after_engines_are_freed_still_reaches_its_handler(exported):
    # A child process: what this guards against is the process dying of SIGSEGV at the signal.
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_ENGINES, str(exported.onnx_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.split() == ["handled", "alive"], (proc.returncode, proc.stderr)
