"""The ONNX Runtime engine: the default on CPU machines.

Session options are tuned for one low-latency stream: intra-op threads = the
physical cores this process may run on (hyper-threads share the FMA units, so
they add contention, not flops), one inter-op thread with sequential execution
(the graph is a chain), every graph optimisation, and the memory arena plus
memory-pattern planning so steady-state frames allocate nothing.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from endofuse.errors import EndofuseError, MissingFileError
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.engines.onnx_export import FUSED, MISSING_NBI, check_metadata, missing_nbi_path_for

CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (hyper-thread siblings counted once)."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    try:
        siblings = {Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip()
                    for cpu in allowed}
    except OSError:
        return len(allowed)
    return max(1, len(siblings))


def session_options(threads: int | None = None, spinning: bool = False) -> ort.SessionOptions:
    """SessionOptions for one latency-bound stream (see the module docstring).

    `spinning=True` lets idle intra-op workers busy-wait for the next parallel
    region: fastest for the engine alone, but it takes the cores the pipeline's
    capture, decode and overlay threads need (measured in the README).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.enable_mem_reuse = True
    # Off by default: spinning workers burn the cores that capture/overlay threads
    # need between inferences; off, the pipeline keeps ~100 % of engine-only
    # throughput (on a 2-core Xeon, on: engine alone 1.4x faster, file runs 16 % slower).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # warnings about unused initialisers are noise to users
    return options


def providers_for(device: str | None) -> list[str]:
    """Execution providers: CUDA first when asked for (or available and no device given), else CPU."""
    available = ort.get_available_providers()
    wants_cuda = device is not None and str(device).startswith("cuda")
    if wants_cuda and CUDA_EP not in available:
        raise EndofuseError(f"device {device!r} asked for, but this onnxruntime has no {CUDA_EP} "
                            f"(providers: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'")
    if wants_cuda or (device is None and CUDA_EP in available):
        return [CUDA_EP, CPU_EP]
    return [CPU_EP]


def create_session(path: str | os.PathLike, device: str | None = None, threads: int | None = None,
                   spinning: bool = False) -> ort.InferenceSession:
    """An InferenceSession with the tuned options; a file ONNX Runtime cannot read raises EndofuseError naming it."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX model file not found: {path}")
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads, spinning),
                                    providers=providers_for(device))
    except EndofuseError:
        raise
    except Exception as exc:  # ORT raises its own pybind exception types
        raise EndofuseError(f"ONNX model file {path} cannot be loaded by onnxruntime {ort.__version__}: "
                            f"{str(exc).splitlines()[0]}") from exc


def endofuse_metadata(session: ort.InferenceSession, path: Path, variant: str, names: list[str]) -> dict[str, str]:
    """The metadata `endofuse export` wrote, checked, and the session's inputs checked against `names`."""
    meta = check_metadata(dict(session.get_modelmeta().custom_metadata_map), path, variant)
    got = [i.name for i in session.get_inputs()]
    if got != names:
        raise EndofuseError(f"model file {path} has inputs {got}, expected {names}")
    return meta


class OnnxRuntimeEngine(Engine):
    """Runs `NAME.onnx` (and `NAME.missing-nbi.onnx` beside it, when present) with ONNX Runtime."""

    native = "numpy"

    def __init__(self, path: str | os.PathLike, *, device: str | None = None, threads: int | None = None,
                 spinning: bool = False) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, device, threads, spinning)
        meta = endofuse_metadata(self.session, self.path, FUSED, ["wli", "nbi"])
        shape = self.session.get_inputs()[0].shape
        fixed_batch = shape[0] if isinstance(shape[0], int) else None
        on_cuda = self.session.get_providers()[0] == CUDA_EP
        super().__init__(input_size=(int(shape[2]), int(shape[3])), num_classes=int(meta["num_classes"]),
                         model_label=meta["model_label"], device="cuda" if on_cuda else "cpu", fixed_batch=fixed_batch)
        self.metadata = meta
        self.precision = meta.get("precision", "fp32")
        self.name = "onnxruntime" if self.precision == "fp32" else f"onnxruntime-{self.precision}"
        self.missing_nbi_path = missing_nbi_path_for(self.path)
        self.missing_nbi_session = None
        if self.missing_nbi_path.is_file():
            # Loaded now, not on the first NBI dropout, so that frame is not the slow one.
            self.missing_nbi_session = create_session(self.missing_nbi_path, device, threads, spinning)
            other = endofuse_metadata(self.missing_nbi_session, self.missing_nbi_path, MISSING_NBI, ["wli"])
            for key in ("source_sha256", "img_size", "num_classes", "precision"):
                if other.get(key) != meta.get(key):
                    raise EndofuseError(f"{self.missing_nbi_path} does not match {self.path} ({key}: "
                                        f"{other.get(key)!r} vs {meta.get(key)!r}); export both again together")

    @property
    def supports_missing_nbi(self) -> bool:
        return self.missing_nbi_session is not None

    def _run(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        if nbi is not None:
            return self.session.run(None, {"wli": wli, "nbi": nbi})[0]
        if self.missing_nbi_session is None:
            raise EndofuseError(f"no NBI frame given, but the missing-NBI model {self.missing_nbi_path} "
                                f"is not there; export again with `endofuse export` (it writes both files)")
        return self.missing_nbi_session.run(None, {"wli": wli})[0]


