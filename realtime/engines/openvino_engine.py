"""The OpenVINO engine: bf16 / INT8 on the CPU's matrix units (AMX, AVX-512-BF16, VNNI).

Opens an `.onnx` from `endofuse export` or an OpenVINO IR (`.xml` + `.bin`),
with the missing-NBI graph beside it. Precision: "f32", "bf16", "int8" (an IR
quantised by NNCF), or "auto" = OpenVINO's own default inference precision for
this CPU (bf16 where the CPU has bf16 units, f32 elsewhere); the engine reads
back what the compiled model chose, and its name says it (`openvino-bf16`).

Settings for one live stream: PERFORMANCE_HINT=LATENCY (one stream, no
batching across requests), INFERENCE_NUM_THREADS = physical cores unless told
(`set_threads` changes it on an open engine), CPU pinning only for an engine
that uses every core it may run on (see `cpu_pinning`), and
OpenVINO's compiled-model cache (CACHE_DIR under the endofuse cache), so a
second start skips graph compilation.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from endofuse.checks import check_threads
from endofuse.errors import EndofuseError
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.engines.cache import cache_dir, cache_folder
from endofuse.realtime.engines.onnx_export import FUSED, MISSING_NBI, check_metadata, missing_nbi_path_for
from endofuse.realtime.engines.openvino_env import openvino_core
from endofuse.realtime.engines.openvino_export import PRECISIONS, read_model

MATCHING_KEYS = ("source_sha256", "img_size", "num_classes", "model_name", "precision")


def compiled_cache_dir(precision: str = "auto") -> Path:
    """Where OpenVINO keeps compiled-model blobs for one precision (`$ENDOFUSE_CACHE/openvino-compiled/<precision>`).

    One folder per precision because OpenVINO 2026.4's blob key leaves out
    INFERENCE_PRECISION_HINT: with one folder, a bf16 open loaded the f32 blob and
    returned wrong logits (max error 3.4 on the tiny demo model, half its logit range).
    """
    return cache_dir() / "openvino-compiled" / precision


def cpu_pinning(threads: int) -> str:
    """ENABLE_CPU_PINNING for an engine of `threads` threads: "YES" only when it uses every physical core.

    Under the LATENCY hint OpenVINO pins its inference threads, choosing cores from the start of the CPU
    list in every process alike. Engines with fewer threads than cores in different processes (N rooms,
    the replicas of `endofuse serve`) were then all pinned to CPU 0: two 1-thread engines side by side
    took 10.4 ms a pair each instead of 4.4 with the other core idle (2-core AMD EPYC). Unpinned, the OS
    spreads them; alone, an engine was as fast either way.
    """
    from endofuse.realtime.engines.ort_engine import physical_cores

    return "YES" if threads >= physical_cores() else "NO"


def compile_config(precision: str, threads: int | None, cache: bool = True) -> dict[str, str]:
    """The CPU plugin properties for one latency-bound stream at `precision`."""
    from endofuse.realtime.engines.ort_engine import physical_cores

    threads = threads or physical_cores()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads),
              "ENABLE_CPU_PINNING": cpu_pinning(threads)}
    if precision in ("f32", "bf16"):
        config["INFERENCE_PRECISION_HINT"] = precision
    if cache:
        config["CACHE_DIR"] = str(cache_folder("openvino-compiled", precision))  # one line if not writable
    return config


def default_cpu_precision() -> str:
    """What OpenVINO's CPU plugin runs float graphs in when not told: "bf16" on CPUs with bf16 units, else "f32"."""
    return _type_name(openvino_core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def open_openvino_engine(model_file: Path, *, precision: str = "auto", threads: int | None = None,
                         device: str | None = None, calibration: str | os.PathLike | None = None,
                         calibration_count: int = 32) -> OpenVinoEngine:
    """An engine on an .onnx/.xml file; precision "int8" quantises an fp32 file once (cached) unless it is INT8."""
    from endofuse.realtime.engines.openvino_export import IR_SUFFIXES, cached_int8_ir, onnx_metadata

    model_file = Path(model_file)
    if precision == "int8":
        if model_file.suffix.lower() in IR_SUFFIXES:
            meta = read_model(openvino_core(), model_file)[1]
        else:
            meta = onnx_metadata(model_file)
        if meta.get("precision") != "int8":
            if model_file.suffix.lower() in IR_SUFFIXES:
                raise EndofuseError(f"{model_file} is {meta.get('precision', 'f32')} IR; INT8 is made from the "
                                    f"checkpoint or its ONNX export (or `endofuse export --format openvino-int8`)")
            model_file = cached_int8_ir(model_file, calibration, calibration_count)
    return OpenVinoEngine(model_file, precision=precision, threads=threads, device=device)


class OpenVinoEngine(Engine):
    """Runs `NAME.xml`/`NAME.onnx` (and `NAME.missing-nbi.*` beside it, when present) on the CPU with OpenVINO."""

    native = "numpy"

    def __init__(self, path: str | os.PathLike, *, precision: str = "auto", threads: int | None = None,
                 device: str | None = None, cache: bool = True) -> None:
        if precision not in PRECISIONS:
            raise EndofuseError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if device is not None and not str(device).startswith("cpu"):
            raise EndofuseError(f"the OpenVINO engine runs on the CPU; device {device!r} needs backend "
                                f"'onnxruntime' (CUDA) or 'tensorrt'")
        self.core = openvino_core()
        self.path = Path(path)
        model, meta = read_model(self.core, self.path)
        check_metadata(meta, self.path, FUSED)
        stored = meta.get("precision", "fp32")
        if stored == "int8" and precision not in ("auto", "int8"):
            raise EndofuseError(f"{self.path} is an INT8 model; open it with precision 'int8' (or 'auto'), or open "
                                f"the f32 export for {precision}")
        if precision == "int8" and stored != "int8":
            raise EndofuseError(f"{self.path} is not quantised; open the .pt checkpoint or the fp32 export with "
                                f"backend 'openvino-int8' (calibrated once, then cached), or write INT8 IR with "
                                f"`endofuse export --format openvino-int8`")
        if precision == "auto" and stored in ("f32", "bf16"):
            precision = stored  # an IR exported with --precision bf16 runs bf16 by default
        self.requested_precision = "int8" if stored == "int8" else precision
        self._cache = cache
        config = compile_config(self.requested_precision, threads, cache)
        self.compiled = self._compile(model, config, self.path)
        shape = self.compiled.inputs[0].get_partial_shape()
        fixed_batch = shape[0].get_length() if shape[0].is_static else None
        super().__init__(input_size=(shape[2].get_length(), shape[3].get_length()),
                         num_classes=int(meta["num_classes"]), model_label=meta["model_label"], device="cpu",
                         fixed_batch=fixed_batch)
        self.metadata = meta
        self.inference_precision = _type_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision = "int8" if stored == "int8" else self.inference_precision
        self.name = f"openvino-{self.precision}"
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self._check_inputs(self.compiled, self.path, ["wli", "nbi"])
        self.request = self.compiled.create_infer_request()
        self.missing_nbi_path = missing_nbi_path_for(self.path)
        self.missing_nbi_request = None
        if self.missing_nbi_path.is_file():
            # Compiled now, not on the first NBI dropout, so that frame is not the slow one.
            other_model, other = read_model(self.core, self.missing_nbi_path)
            check_metadata(other, self.missing_nbi_path, MISSING_NBI)
            for key in MATCHING_KEYS:
                if other.get(key) != meta.get(key):
                    raise EndofuseError(f"{self.missing_nbi_path} does not match {self.path} ({key}: "
                                        f"{other.get(key)!r} vs {meta.get(key)!r}); export both again together")
            compiled = self._compile(other_model, config, self.missing_nbi_path)
            self._check_inputs(compiled, self.missing_nbi_path, ["wli"])
            self.missing_nbi_request = compiled.create_infer_request()
        # One infer request per graph: a request is not re-entrant (the demo may call from two threads).
        self._lock = threading.Lock()

    def set_threads(self, threads: int) -> None:
        """Compile both graphs again for `threads` inference threads, e.g. to leave a core to the live
        pipeline's own stages (the files are read again rather than kept: a model's weights stay out of memory)."""
        check_threads(threads, "OpenVINO threads")
        config = compile_config(self.requested_precision, threads, self._cache)
        compiled = self._compile(read_model(self.core, self.path)[0], config, self.path)
        other = None
        if self.missing_nbi_request is not None:
            other = self._compile(read_model(self.core, self.missing_nbi_path)[0], config, self.missing_nbi_path)
        with self._lock:
            self.compiled, self.request = compiled, compiled.create_infer_request()
            if other is not None:
                self.missing_nbi_request = other.create_infer_request()
            self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

    @property
    def supports_missing_nbi(self) -> bool:
        return self.missing_nbi_request is not None

    def _run(self, wli: np.ndarray, nbi: np.ndarray | None) -> np.ndarray:
        with self._lock:
            if nbi is not None:
                return self.request.infer({"wli": wli, "nbi": nbi}, share_inputs=True)[0]
            if self.missing_nbi_request is None:
                raise EndofuseError(f"no NBI frame given, but the missing-NBI model {self.missing_nbi_path} "
                                    f"is not there; export again with `endofuse export` (it writes both files)")
            return self.missing_nbi_request.infer({"wli": wli}, share_inputs=True)[0]

    def _compile(self, model, config: dict[str, str], path: Path):
        try:
            return self.core.compile_model(model, "CPU", config)
        except Exception as exc:  # RuntimeError with a C++ trace
            raise EndofuseError(f"OpenVINO cannot compile {path} for the CPU: {str(exc).splitlines()[0]}") from exc

    @staticmethod
    def _check_inputs(compiled, path: Path, names: list[str]) -> None:
        got = [i.get_any_name() for i in compiled.inputs]
        if got != names:
            raise EndofuseError(f"model file {path} has inputs {got}, expected {names}")


def _type_name(element_type) -> str:
    """ov.Type -> "f32" / "bf16" / "f16"."""
    return element_type.get_type_name()
