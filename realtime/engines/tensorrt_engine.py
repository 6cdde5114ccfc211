"""TensorRT: build a plan from the ONNX export and run it, with an engine cache.

Written against TensorRT's official Python API (TensorRT 10: `trt.Builder`,
`OnnxParser`, optimisation profiles, `BuilderFlag.FP16`, a timing cache,
`Runtime.deserialize_cuda_engine`, named tensors with `set_tensor_address` and
`execute_async_v3`). TensorRT cannot be installed on endofuse's CPU CI
machines: this module imports `tensorrt` only when used, and its tests skip
there with the reason.

A plan only runs on the GPU model and TensorRT version that built it, so plans
are cached under `cache_dir()/tensorrt/<gpu>-<trt version>-<onnx sha>-<precision>/`
with a JSON sidecar (`NAME.plan.json`) recording what built them; a second start
then takes seconds instead of a rebuild. Opening a plan from another GPU or
TensorRT version fails with both named, instead of TensorRT's opaque error.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from endofuse.errors import EndofuseError
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.engines.cache import build_entry, cache_dir, cache_entry, file_sha256
from endofuse.realtime.engines.onnx_export import FUSED, MISSING_NBI, missing_nbi_path_for

WORKSPACE_BYTES = 1 << 30
MAX_BATCH = 8


@dataclass(frozen=True)
class PlanInfo:
    """What a plan was built from and for: the sidecar beside every plan."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str
    onnx_sha256: str
    precision: str
    max_batch: int
    img_size: int
    num_classes: int
    model_label: str


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EndofuseError("TensorRT is not installed: it needs an NVIDIA GPU machine "
                            "(pip install 'endofuse[gpu]'); use backend 'onnxruntime' here") from exc
    if not torch.cuda.is_available():
        raise EndofuseError("TensorRT is installed but no CUDA device is visible; use backend 'onnxruntime'")
    return trt


def current_gpu() -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of the current CUDA device."""
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def check_plan_compatibility(info: PlanInfo, plan: Path, gpu_name: str, compute_capability: str,
                             tensorrt_version: str) -> None:
    """Refuses, naming both sides, a plan built on another GPU or TensorRT version."""
    if (info.gpu_name, info.compute_capability) != (gpu_name, compute_capability):
        raise EndofuseError(f"TensorRT engine {plan} was built for GPU {info.gpu_name} (sm {info.compute_capability}), "
                            f"this machine has {gpu_name} (sm {compute_capability}); rebuild it here with "
                            f"`endofuse export --format tensorrt`")
    if info.tensorrt_version != tensorrt_version:
        raise EndofuseError(f"TensorRT engine {plan} was built with TensorRT {info.tensorrt_version}, this machine has "
                            f"{tensorrt_version}; rebuild it with `endofuse export --format tensorrt`")


def sidecar_for(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def read_plan_info(plan: Path) -> PlanInfo:
    sidecar = sidecar_for(plan)
    if not sidecar.is_file():
        raise EndofuseError(f"TensorRT engine {plan} has no {sidecar.name} beside it (not built by endofuse?); "
                            f"rebuild it with `endofuse export --format tensorrt`")
    try:
        return PlanInfo(**json.loads(sidecar.read_text(encoding="utf-8")))
    except (TypeError, ValueError) as exc:
        raise EndofuseError(f"{sidecar}: unreadable plan description ({exc}); rebuild the engine") from exc


def build_plans(onnx_path: str | os.PathLike, out_plan: str | os.PathLike, *, fp16: bool = True,
                max_batch: int = MAX_BATCH, log=print) -> Path:
    """Builds `out_plan` (+ its `NAME.missing-nbi.plan` sibling) from an export, each with a sidecar.

    Returns `out_plan`.
    """
    trt = _import_tensorrt()
    import onnx

    onnx_path, out_plan = Path(onnx_path), Path(out_plan)
    out_plan.parent.mkdir(parents=True, exist_ok=True)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    gpu_name, capability = current_gpu()
    info = PlanInfo(gpu_name, capability, trt.__version__, file_sha256(onnx_path), "fp16" if fp16 else "fp32",
                    max_batch, int(meta.get("img_size", 0)), int(meta.get("num_classes", 0)),
                    meta.get("model_label", onnx_path.stem))
    logger = trt.Logger(trt.Logger.WARNING)
    timing_cache_file = cache_dir() / "tensorrt" / f"timing-{_slug(gpu_name)}-trt{trt.__version__}.cache"
    sources = [(FUSED, onnx_path, out_plan),
               (MISSING_NBI, missing_nbi_path_for(onnx_path), missing_nbi_path_for(out_plan))]
    for variant, source, target in sources:
        if not source.is_file():
            continue
        plan = _build_one(trt, logger, source, fp16, max_batch, info.img_size, timing_cache_file)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(plan)
        os.replace(tmp, target)
        sidecar_for(target).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
        log(f"tensorrt {variant:<11} {info.precision} plan for {gpu_name} -> {target}")
    return out_plan


def _build_one(trt, logger, onnx_path: Path, fp16: bool, max_batch: int, size: int, timing_cache_file: Path) -> bytes:
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; older versions need the flag.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if flag is None or int(trt.__version__.split(".")[0]) >= 10 else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EndofuseError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        fixed = tensor.shape[0] != -1
        low, best, high = (tensor.shape[0],) * 3 if fixed else (1, 1, max_batch)  # latency first: optimise batch 1
        profile.set_shape(tensor.name, (low, 3, size, size), (best, 3, size, size), (high, 3, size, size))
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache_file.read_bytes() if timing_cache_file.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EndofuseError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    timing_cache_file.parent.mkdir(parents=True, exist_ok=True)
    timing_cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTEngine(Engine):
    """Runs TensorRT plans on CUDA torch tensors (numpy inputs are copied to the GPU and back)."""

    native = "torch"

    def __init__(self, plan: str | os.PathLike, device: str | None = None) -> None:
        trt = _import_tensorrt()
        plan = Path(plan)
        info = read_plan_info(plan)
        check_plan_compatibility(info, plan, *current_gpu(), trt.__version__)
        super().__init__(input_size=(info.img_size, info.img_size), num_classes=info.num_classes,
                         model_label=info.model_label, device=device or "cuda")
        self.name, self.info = "tensorrt", info
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._contexts = {FUSED: self._load(plan)}
        wli_only = missing_nbi_path_for(plan)
        if wli_only.is_file():
            self._contexts[MISSING_NBI] = self._load(wli_only)

    def _load(self, plan: Path):
        engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise EndofuseError(f"TensorRT could not deserialise {plan} (corrupt, or built by another TensorRT/GPU)")
        return engine, engine.create_execution_context()

    @property
    def supports_missing_nbi(self) -> bool:
        return MISSING_NBI in self._contexts

    def _run(self, wli: torch.Tensor, nbi: torch.Tensor | None) -> torch.Tensor:
        variant = FUSED if nbi is not None else MISSING_NBI
        if variant not in self._contexts:
            raise EndofuseError("no NBI frame given, but this TensorRT engine has no missing-NBI plan; rebuild it")
        engine, context = self._contexts[variant]
        inputs = {"wli": wli.contiguous(), "nbi": None if nbi is None else nbi.contiguous()}
        for name, tensor in inputs.items():
            if tensor is not None:
                context.set_input_shape(name, tuple(tensor.shape))
                context.set_tensor_address(name, tensor.data_ptr())
        logits = torch.empty((wli.shape[0], self.num_classes, *self.input_size), device=wli.device, dtype=torch.float32)
        context.set_tensor_address("logits", logits.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream(wli.device).cuda_stream):
            raise EndofuseError("TensorRT execution failed (see the TensorRT log)")
        return logits


def open_tensorrt_engine(source: str | os.PathLike, device: str | None = None, fp16: bool = True) -> TensorRTEngine:
    """A TensorRT engine from a plan, or from an ONNX export through the plan cache (built once)."""
    source = Path(source)
    if source.suffix.lower() != ".onnx":
        return TensorRTEngine(source, device)
    trt = _import_tensorrt()
    gpu_name, capability = current_gpu()
    folder = cache_entry("tensorrt", _slug(gpu_name), f"sm{capability}", f"trt{trt.__version__}",
                         file_sha256(source)[:24], "fp16" if fp16 else "fp32")
    plan = folder / "model.plan"
    build_entry(folder, lambda: build_plans(source, plan, fp16=fp16, log=lambda line: None))
    return TensorRTEngine(plan, device)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)
