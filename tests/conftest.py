"""Shared test setup.

TRITON_INTERPRET must be set before any module defines a `@triton.jit` kernel,
so it is set here, at import time of the conftest, before tests import
`endofuse.kernels`. The interpreter runs the real kernels on CPU tensors.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores: keep torch from oversubscribing when pytest and a subprocess run at once.
os.environ.setdefault("OMP_NUM_THREADS", "2")
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# torch.compile's C++ build imports setuptools, whose distutils override fails once anything has imported or probed
# `pip` (its import hook then hands out the stdlib distutils). wheel-axle (a Holoscan dependency) imports pip on the
# first interpreter start after an install, as in CI: then use the stdlib's distutils; otherwise override it now.
# The variable is only read while setuptools imports: it is removed again so that child processes (whose stderr the
# tests read) do not print setuptools' warning about it.
_PIP_FIRST = "pip" in sys.modules and "SETUPTOOLS_USE_DISTUTILS" not in os.environ
if _PIP_FIRST:
    os.environ["SETUPTOOLS_USE_DISTUTILS"] = "stdlib"
import setuptools  # noqa: E402, F401, I001

if _PIP_FIRST:
    del os.environ["SETUPTOOLS_USE_DISTUTILS"]

REPO_ROOT = Path(__file__).resolve().parents[1]
# `../shared` beside the checkout (CI and developer machines); a user's clone has none.
SAMPLE_DATA = Path(os.environ.get("ENDOFUSE_SAMPLE_DATA", REPO_ROOT.parent / "shared" / "data" / "wli-nbi-sample"))


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The 5-pair real WLI/NBI sample in the reference CSV format; skips when absent."""
    if not (SAMPLE_DATA / "Training.csv").is_file():
        pytest.skip(f"real WLI/NBI sample not found at {SAMPLE_DATA} (needs ../shared beside the checkout)")
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


BENCHMARKS = REPO_ROOT / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """A script from benchmarks/ (not a package) imported by path, as `python benchmarks/NAME.py` would see it."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # for its `_common` helper
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic_endoscope_recording(tmp_path_factory):
    """`endofuse synth --video 2 --endoscope` at 360x640 (60 frames): (endoscope.mp4, truth.csv rows, the
    decoded frames), made once for the realtime and demo tests."""
    import csv

    import cv2

    from endofuse.train.synth_command import write_endoscope_video

    out = tmp_path_factory.mktemp("endoscope-clip")
    write_endoscope_video(out, 2.0, 30.0, (360, 640), seed=0, progress=False)
    with open(out / "truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    capture = cv2.VideoCapture(str(out / "endoscope.mp4"))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return out / "endoscope.mp4", truth, frames


# ---- stand-ins shared by the realtime, demo and holoscan tests ----
# ColourThresholdEngine follows the Engine interface (infer, warmup, name,
# input_size, num_classes, model_label) with a rule simple enough to recompute
# in a test: the tumour logit is `red - threshold` of the resized WLI input, the
# background logit 0; `delay_s` makes it a slow consumer for queue tests.


class ColourThresholdEngine:
    name = "colour-threshold"
    model_label = "colour threshold (test stand-in, not a model)"
    num_classes = 2

    def __init__(self, input_size: tuple[int, int] = (64, 64), threshold: float = 0.5, delay_s: float = 0.0) -> None:
        self.input_size = tuple(input_size)
        self.threshold = threshold
        self.delay_s = delay_s
        self.calls: list[bool] = []  # True when the call had an NBI input

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3, *self.input_size), np.float32), None)
        self.calls.clear()

    def infer(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        if wli.shape[1:] != (3, *self.input_size):
            raise ValueError(f"expected (B, 3, {self.input_size[0]}, {self.input_size[1]}) input, got {wli.shape}")
        if nbi is not None and nbi.shape != wli.shape:
            raise ValueError(f"NBI input {nbi.shape} does not match WLI input {wli.shape}")
        self.calls.append(nbi is not None)
        if self.delay_s:
            time.sleep(self.delay_s)
        logits = np.zeros((wli.shape[0], 2, *self.input_size), np.float32)
        logits[:, 1] = wli[:, 0] - self.threshold
        return logits


class ConfidentEngine(ColourThresholdEngine):
    """Tumour logit 8 * (red - threshold): with threshold 0.5, p = 0.98 on pure red, 0.02 on black (the
    stabiliser's thresholds need a confident model)."""

    def infer(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        return 8.0 * super().infer(wli, nbi)


def write_video(path, frames: list[np.ndarray], fps: float = 30.0, fourcc: str = "mp4v") -> None:
    """Write BGR frames with cv2.VideoWriter (what the fault tests feed the pipeline)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path} with {fourcc}")
    for frame in frames:
        writer.write(frame)
    writer.release()


# ---- tiny video files with known frame times (pure python around cv2.imencode / cv2.VideoWriter) ----
def _ebml_size(n: int) -> bytes:
    for length in range(1, 9):
        if n < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | n).to_bytes(length, "big")
    raise ValueError(n)


def _ebml(ident: bytes, payload) -> bytes:
    if isinstance(payload, int):
        payload = payload.to_bytes(max(1, (payload.bit_length() + 7) // 8), "big")
    elif isinstance(payload, str):
        payload = payload.encode()
    return ident + _ebml_size(len(payload)) + payload


def write_mkv(path, frames: list[np.ndarray], times_ms: list[int]) -> None:
    """A Matroska file of MJPEG frames, each stamped with its own time in ms (a variable-frame-rate recording).

    One track, one cluster of SimpleBlocks (times up to 32.7 s); element ids from the Matroska spec.
    """
    import struct

    import cv2

    height, width = frames[0].shape[:2]
    header = _ebml(b"\x1a\x45\xdf\xa3", _ebml(b"\x42\x86", 1) + _ebml(b"\x42\xf7", 1) + _ebml(b"\x42\xf2", 4)
                   + _ebml(b"\x42\xf3", 8) + _ebml(b"\x42\x82", "matroska") + _ebml(b"\x42\x87", 4)
                   + _ebml(b"\x42\x85", 2))
    info = _ebml(b"\x15\x49\xa9\x66", _ebml(b"\x2a\xd7\xb1", 1_000_000)  # TimecodeScale: 1 ms
                 + _ebml(b"\x4d\x80", "endofuse tests") + _ebml(b"\x57\x41", "endofuse tests"))
    video = _ebml(b"\xe0", _ebml(b"\xb0", width) + _ebml(b"\xba", height))
    track = _ebml(b"\xae", _ebml(b"\xd7", 1) + _ebml(b"\x73\xc5", 1) + _ebml(b"\x83", 1)
                  + _ebml(b"\x86", "V_MJPEG") + video)
    blocks = b"".join(
        _ebml(b"\xa3", b"\x81" + struct.pack(">h", int(t)) + b"\x80" + cv2.imencode(".jpg", frame)[1].tobytes())
        for frame, t in zip(frames, times_ms, strict=True))
    cluster = _ebml(b"\x1f\x43\xb6\x75", _ebml(b"\xe7", 0) + blocks)
    segment = _ebml(b"\x18\x53\x80\x67", info + _ebml(b"\x16\x54\xae\x6b", track) + cluster)
    Path(path).write_bytes(header + segment)


def write_zero_duration_mp4(path, frames: list[np.ndarray], fps: float = 25.0) -> None:
    """An MP4 whose sample table gives every frame a duration of 0 (cv2's file, `stts` deltas zeroed in place)."""
    import struct

    write_video(path, frames, fps=fps)
    data = bytearray(Path(path).read_bytes())

    def find(kind: bytes, start: int, end: int) -> int:
        while start + 8 <= end:
            size, name = struct.unpack_from(">I4s", data, start)
            if name == kind:
                return start
            start += size
        raise AssertionError(f"no {kind} box")

    at, end = 0, len(data)
    for kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stts"):
        at = find(kind, at, end)
        end, at = at + struct.unpack_from(">I", data, at)[0], at + 8
    for entry in range(struct.unpack_from(">I", data, at + 4)[0]):
        struct.pack_into(">I", data, at + 8 + 8 * entry + 4, 0)
    Path(path).write_bytes(bytes(data))


def brute_force(wli_time: float, nbi_times: list[float], policy):
    """Reference pairing of one WLI frame with every NBI frame of a recording: (status, NBI time or None).

    The nearest NBI time (ties, within float noise, to the earlier), then the policy's two thresholds.
    """
    from endofuse.realtime.pairing.sync import MISSING, PAIRED, STALE

    if not len(nbi_times):
        return MISSING, None
    nearest = min(abs(t - wli_time) for t in nbi_times)
    best = min(t for t in nbi_times if abs(t - wli_time) <= nearest + 1e-9)
    skew = best - wli_time
    if abs(skew) <= policy.tolerance_s + 1e-9:
        return PAIRED, best
    if abs(skew) <= policy.staleness_s + 1e-9:
        return STALE, best
    return MISSING, None


def child_env(**extra: str) -> dict:
    """The environment of a `python -c` child that imports from conftest (its stand-ins)."""
    tests_dir = str(Path(__file__).resolve().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])),
            **extra}


@pytest.fixture
def stand_in_engine(monkeypatch):
    """`open_engine` replaced by the deterministic stand-in: for tests about a command, not the model."""
    import endofuse.realtime.engines as engines

    monkeypatch.setattr(engines, "open_engine", lambda *a, **k: ColourThresholdEngine((32, 40), threshold=0.7))


class ScriptedCapture:
    """A fake `cv2.VideoCapture` that serves `frames` frames and can refuse to open, for camera tests."""

    def __init__(self, frames: int, opens: bool = True, period_s: float = 0.0, size=(24, 32), start: int = 0):
        self.remaining, self.opens, self.period_s = frames, opens, period_s
        self.size, self.served = size, start
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 - the cv2 name
        return self.opens

    def get(self, prop) -> float:
        return 30.0 if self.opens else 0.0  # every property reads as 30 (fps)

    def read(self):
        if not self.opens or self.remaining <= 0:
            return False, None
        if self.period_s:
            time.sleep(self.period_s)
        self.remaining -= 1
        frame = np.full((*self.size, 3), self.served % 256, np.uint8)
        self.served += 1
        return True, frame

    def release(self) -> None:
        self.released = True


# ---- the engines tests' small model and its export, made once per session ----
SIZE = 32  # small inputs: these tests are about correctness, not speed


def tiny_test_model(seed: int = 0):
    """A shallow tiny at 32x32 (export time grows with depth) whose logits depend visibly on both inputs."""
    import torch

    from endofuse.model import build_model

    torch.manual_seed(seed)
    model = build_model("tiny", img_size=SIZE, depth=2, shallow_taps=(1, 1, 2)).eval()
    # The default init leaves the missing-NBI token at zero and the logits nearly input-independent;
    # fan-in scaled weights make both paths, and the difference between them, clearly visible.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    return model


def random_pair(batch: int = 1, seed: int = 1, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.random((batch, 3, size, size), dtype=np.float32) for _ in range(2))


def torch_logits(model, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(wli), None if nbi is None else torch.from_numpy(nbi)).numpy()


@dataclass(frozen=True)
class Exported:
    model: object  # torch.nn.Module
    checkpoint: Path
    onnx_path: Path  # dynamic-batch export in the cache, missing-NBI variant beside it
    cache: Path


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    """One checkpoint opened with ONNX Runtime, i.e. exported into a private cache, once per session."""
    from endofuse.model import save_checkpoint
    from endofuse.realtime.engines import open_engine

    folder = tmp_path_factory.mktemp("engines")
    model = tiny_test_model()
    checkpoint = save_checkpoint(folder / "tiny.pt", model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ENDOFUSE_CACHE", str(folder / "cache"))
        engine = open_engine(checkpoint, backend="onnxruntime", dynamic_batch=True)
    return Exported(model, checkpoint, engine.path, folder / "cache")


@pytest.fixture
def reuse_export(exported, monkeypatch) -> list[dict]:
    """The CLI's export step copies the session's export (already parity-checked) instead of exporting again;
    the list collects each call's keyword arguments."""
    import shutil

    from endofuse.realtime.engines import onnx_export
    from endofuse.realtime.engines.onnx_export import missing_nbi_path_for

    calls = []

    def copy_export(model, out_path, **kwargs):
        calls.append(kwargs)
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported.onnx_path, out_path)
        shutil.copyfile(missing_nbi_path_for(exported.onnx_path), missing_nbi_path_for(out_path))
        return onnx_export.ExportResult(out_path, missing_nbi_path_for(out_path), {})

    monkeypatch.setattr(onnx_export, "export_onnx", copy_export)
    return calls


# ---- a small frame classifier whose predictions spread over three classes (live-classifier tests) ----
def spread_tiny_classifier():
    """entrep-tiny at 32 px, seeded, with classifier weights drawn wide so frames get different classes."""
    import torch

    from endofuse.model.entrep import build_entrep

    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["normal", "small_lesion", "large_lesion"], img_size=32, patch_size=8,
                         vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16, context_length=16,
                         text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    return model


# ---- the training tests' setup ----
TINY_TRAIN = ["--model", "tiny", "--img-size", "32", "--no-progress"]


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`).

    Tiny models gain nothing from a second thread, and on a busy machine OpenMP spin-waits make two
    threads many times slower than one; a child process set to one thread then also repeats the float
    reductions exactly.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synth_dataset(folder: Path, seed: int, size: str = "48x56", pairs: int = 8, test_pairs: int = 2) -> Path:
    """A small synthetic dataset written by `endofuse synth` into `folder`."""
    from endofuse import cli

    assert cli.main(["synth", str(folder), "--pairs", str(pairs), "--test-pairs", str(test_pairs), "--size", size,
                     "--seed", str(seed)]) == 0
    return folder


def train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    """`endofuse train` arguments for a tiny model at 32x32 on `data`, writing `run`."""
    return ["train", "--data", str(data), "--out", str(run), *TINY_TRAIN, *extra]


def read_log(run: Path) -> list[dict]:
    """The rows of a run's log.csv."""
    import csv

    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def spawn_endofuse(args: list[str]) -> subprocess.Popen:
    """`python -m endofuse ARGS` as a child on one thread, stdout and stderr together (text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "endofuse", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_epoch(run: Path, proc: subprocess.Popen, epoch: int, timeout: float = 120) -> None:
    """Until the training child `proc` has logged `epoch` epochs in `run` (fails if it exits or takes longer)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else f"exited {proc.returncode}"
        if (run / "log.csv").is_file() and len(read_log(run)) >= epoch:
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch {epoch} within {timeout} s")


# ---- a real `endofuse demo` server (the browser tests) ----
DEMO_START_TIMEOUT_S = 180


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def demo_server(args: list[str], log: Path):
    """`python -m endofuse demo --port P ARGS` in a child process, output in `log`; yields its URL once it serves
    (fails the test with the log's tail if it exits or does not serve in time), stopped afterwards."""
    import httpx

    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "endofuse", "demo", "--port", str(port), *args],
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + DEMO_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"endofuse demo exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"endofuse demo did not serve {url} within {DEMO_START_TIMEOUT_S} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


# ---- a stand-in ONNX export (Triton repository tests: no model export needed) ----
def stand_in_export(folder: Path, batch: int | str = "batch", size: int = 16) -> Path:
    """Two small ONNX graphs with the export's signature: logits = first 2 channels of (wli + nbi) / of wli."""
    import onnx
    from onnx import TensorProto, helper

    from endofuse.realtime.engines.onnx_export import missing_nbi_path_for

    def save(path: Path, names: list[str]) -> None:
        value = lambda n, c: helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, c, size, size])  # noqa: E731
        nodes = [helper.make_node("Sum", names, ["total"]),
                 helper.make_node("Slice", ["total", "starts", "ends", "axes"], ["logits"])]
        consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v])
                  for n, v in (("starts", 0), ("ends", 2), ("axes", 1))]
        graph = helper.make_graph(nodes, "stand_in", [value(n, 3) for n in names], [value("logits", 2)], consts)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))

    fused = folder / "m.onnx"
    save(fused, ["wli", "nbi"])
    save(missing_nbi_path_for(fused), ["wli"])
    return fused
