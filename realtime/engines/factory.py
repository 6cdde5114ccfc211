"""`open_engine`: one call from a checkpoint or model file to a ready engine.

Source: None (the bundled demo weights), an `nn.Module`, a `.pt`/`.pth`
checkpoint, an `.onnx` file from `endofuse export`, an OpenVINO IR (`.xml`),
or a TensorRT plan (`.plan`/`.engine`). A checkpoint opened with an ONNX-based
backend is exported once into the cache (keyed by the checkpoint's sha256) and
reused afterwards. `auto` picks TensorRT when `tensorrt` and CUDA exist, then
OpenVINO on x86 CPUs, then ONNX Runtime (its CUDA provider when present, else
CPU), then torch. `onnxruntime-int8` runs an INT8 version (ONNX Runtime's
operator form, calibrated on synthetic pairs unless the file given is already
an INT8 export), also made once and cached; `openvino-int8` likewise runs
NNCF-quantised IR. Every engine option is an argument of `open_engine`, so
callers never construct engine classes; `BACKENDS` and `MODEL_CHOICES` are the
one list each of what `--engine` and `--model` accept (run, bench, demo).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from endofuse import __version__
from endofuse.checks import check_device, check_threads
from endofuse.errors import EndofuseError, InvalidOptionError, MissingFileError
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.engines.cache import build_entry, cache_entry, file_sha256
from endofuse.realtime.engines.onnx_export import ONNX_OPSET, export_onnx, missing_nbi_path_for

BACKENDS = ("auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "tensorrt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
IR_SUFFIXES = (".xml",)  # OpenVINO IR (+ .bin beside it)
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
DEMO_MODEL_NAME = "tiny"  # the bundled demo weights are the tiny config
# what --model accepts (run, bench, demo): the configs; only tiny has bundled weights, the others need --checkpoint
MODEL_CHOICES = ("tiny", "small", "paper")


def tensorrt_available() -> bool:
    """True when the `tensorrt` package imports and a CUDA device is visible."""
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def openvino_preferred(device: str | None = None) -> bool:
    """True when `auto` should pick OpenVINO: an x86 CPU (its CPU plugin's home), openvino installed, no GPU asked."""
    import platform

    on_cpu = device is None or str(device).startswith("cpu")
    return (on_cpu and platform.machine().lower() in X86_MACHINES
            and importlib.util.find_spec("openvino") is not None)


def resolve_backend(backend: str, source: object, device: str | None = None) -> str:
    """The concrete backend for `backend` ("auto" resolved), a source of the given kind and the device asked for.

    `auto`: TensorRT (CUDA) -> OpenVINO on x86 CPUs -> ONNX Runtime -> torch. An ONNX file quantised for
    ONNX Runtime (`onnx-int8` export) stays with ONNX Runtime.
    """
    if backend not in BACKENDS:
        raise EndofuseError(f"unknown engine backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    suffix = Path(source).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    if suffix in PLAN_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise EndofuseError(f"{source} is a TensorRT plan; it runs only with backend 'tensorrt', not {backend!r}")
        return "tensorrt"
    if suffix in IR_SUFFIXES:
        if backend not in ("auto", "openvino", "openvino-int8"):
            raise EndofuseError(f"{source} is an OpenVINO IR; it runs only with backend 'openvino', not {backend!r}")
        return backend if backend != "auto" else "openvino"
    if suffix in ONNX_SUFFIXES and backend == "torch":
        raise EndofuseError(f"{source} is an ONNX file; the torch backend needs a .pt checkpoint")
    if backend != "auto":
        return backend
    if tensorrt_available():
        return "tensorrt"
    if openvino_preferred(device) and not (suffix in ONNX_SUFFIXES and _onnx_precision(source) == "int8"):
        return "openvino"
    if importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    return "torch"


def open_engine(checkpoint_or_model_file: str | os.PathLike | nn.Module | None = None, backend: str = "auto",
                device: str | None = None, model_name: str = DEMO_MODEL_NAME, *, dynamic_batch: bool = False,
                compile: bool = False, channels_last: bool = False, cuda_graphs: bool | None = None,
                threads: int | None = None, spinning: bool = False, fp16: bool = True, precision: str = "auto",
                calibration: str | os.PathLike | None = None, server: str | None = None,
                token: str | None = None, deadline_ms: float = 100.0, fallback: str | Engine | None = None,
                request_every: str = "auto") -> Engine:
    """Opens an engine (see the module docstring).

    `model_name` (one of MODEL_CHOICES) applies when the source is None: tiny opens the bundled demo
    weights; small and paper have none (pass a checkpoint). `dynamic_batch`: exports
    with a dynamic batch dimension. torch only: `compile`, `channels_last`, `cuda_graphs` (default: on
    for CUDA). ONNX Runtime only: `threads` (intra-op; default the physical cores) and `spinning` (idle
    workers busy-wait: faster alone, slower beside the pipeline's threads). TensorRT only: `fp16`.
    OpenVINO only: `threads`, `precision` ("auto", "f32", "bf16", "int8"; backend "openvino-int8" =
    "int8") and `calibration`, a dataset folder whose frames calibrate INT8 (default: synthetic pairs).

    `server`: the URL of an `endofuse serve` (realtime/serve/client.py): the network runs there, with
    `token`, `deadline_ms` and `request_every` (realtime/serve/pacing.py); `fallback="local"` opens the
    local engine the other arguments describe and runs it while the server is away (or pass an Engine).
    A server that cannot be reached at open is not an error: one line goes to stderr and the engine
    starts offline (no masks, "AI OFFLINE"), assuming the input size and classes of the local model the
    other arguments name (`describe_model`; the fallback's when given) until the server answers; a
    server whose /health then names another size or class count is not used (one line). A server that
    refuses the token (401) raises RequestRefused.
    """
    if server is not None:
        from endofuse.realtime.serve.client import open_remote_engine

        if fallback == "local":
            fallback = open_engine(checkpoint_or_model_file, backend, device, model_name, threads=threads)
        elif fallback is not None and not isinstance(fallback, Engine):
            raise InvalidOptionError(f"fallback must be 'local', an Engine or None, got {fallback!r}")
        return open_remote_engine(server, token, deadline_ms, fallback, request_every=request_every,
                                  local_model=lambda: describe_model(checkpoint_or_model_file, model_name))
    device = check_device(device, torch_cuda=False)  # "banana": one line, before any model is loaded
    threads = check_threads(threads, "threads")  # 10000 would start 10000 OS threads in ONNX Runtime
    source = _resolve_source(checkpoint_or_model_file, model_name)
    backend = resolve_backend(backend, source, device)
    if backend == "torch":
        check_device(device)  # a CUDA request without a CUDA torch
        model, label = load_model_and_label(source)
        from endofuse.realtime.engines.torch_engine import TorchEngine
        return TorchEngine(model, model_label=label, device=device, compile=compile, channels_last=channels_last,
                           cuda_graphs=cuda_graphs)
    if backend.startswith("openvino"):
        from endofuse.realtime.engines.openvino_engine import open_openvino_engine
        model_file = source if _suffix(source) in ONNX_SUFFIXES + IR_SUFFIXES else cached_onnx(source, dynamic_batch)
        return open_openvino_engine(model_file, precision="int8" if backend == "openvino-int8" else precision,
                                    threads=threads, device=device, calibration=calibration)
    onnx_path = source if _suffix(source) in ONNX_SUFFIXES + PLAN_SUFFIXES else cached_onnx(source, dynamic_batch)
    if backend.startswith("onnxruntime"):
        from endofuse.realtime.engines.ort_engine import OnnxRuntimeEngine
        if backend == "onnxruntime-int8":
            onnx_path = cached_int8(onnx_path)
        return OnnxRuntimeEngine(onnx_path, device=device, threads=threads, spinning=spinning)
    from endofuse.realtime.engines.tensorrt_engine import open_tensorrt_engine
    return open_tensorrt_engine(onnx_path, device=device, fp16=fp16)


def describe_model(source: str | os.PathLike | nn.Module | None = None, model_name: str = DEMO_MODEL_NAME) -> dict:
    """{"input_size", "num_classes", "model"} of what `open_engine(source, model_name=...)` would open, read
    from the file's own description (checkpoint config, export metadata, plan sidecar) without building an
    engine. No source: the `model_name` config (a room served by another machine needs no weights)."""
    if isinstance(source, nn.Module):
        return {"input_size": (source.img_size,) * 2, "num_classes": int(source.num_classes),
                "model": _label_for_module(source)}
    if source is None:
        from endofuse.model import MODEL_CONFIGS

        if model_name not in MODEL_CONFIGS:
            raise InvalidOptionError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_CONFIGS)}")
        size = MODEL_CONFIGS[model_name].img_size
        return {"input_size": (size, size), "num_classes": 2, "model": f"{model_name} (config)"}
    path = _resolve_source(source, model_name)
    suffix = _suffix(path)
    if suffix in CHECKPOINT_SUFFIXES:
        from endofuse.model import MODEL_CONFIGS
        from endofuse.model.checkpoint import read_checkpoint

        payload = read_checkpoint(path)
        kwargs = payload["model_kwargs"]
        config = MODEL_CONFIGS.get(payload["model_name"])
        size = kwargs.get("img_size") or (config.img_size if config is not None else None)
        if size is None:
            raise EndofuseError(f"{path}: its config names no input size (model {payload['model_name']!r})")
        label = (payload.get("extra") or {}).get("model_label") or f"{payload['model_name']} ({path.name})"
        return {"input_size": (int(size),) * 2, "num_classes": int(kwargs["num_classes"]), "model": label}
    if suffix in PLAN_SUFFIXES:
        from endofuse.realtime.engines.tensorrt_engine import read_plan_info

        info = read_plan_info(path)
        return {"input_size": (info.img_size,) * 2, "num_classes": info.num_classes, "model": info.model_label}
    if suffix in IR_SUFFIXES:
        from endofuse.realtime.engines.openvino_env import openvino_core
        from endofuse.realtime.engines.openvino_export import read_model

        meta = read_model(openvino_core(), path)[1]
    else:
        import onnx

        try:
            meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise EndofuseError(f"model file {path} is not a readable ONNX file ({type(exc).__name__})") from None
    if "img_size" not in meta or "num_classes" not in meta:
        raise EndofuseError(f"model file {path} was not written by `endofuse export` (no endofuse metadata)")
    return {"input_size": (int(meta["img_size"]),) * 2, "num_classes": int(meta["num_classes"]),
            "model": meta.get("model_label", path.name)}


def cached_onnx(source: Path | nn.Module, dynamic_batch: bool = False) -> Path:
    """The ONNX export of a checkpoint (or in-memory model), made once and kept in the cache."""
    if isinstance(source, nn.Module):
        digest, label = module_sha256(source), _label_for_module(source)
    else:
        digest, label = file_sha256(source), None
    folder = cache_entry("onnx", digest[:24], f"endofuse{__version__}", f"torch{torch.__version__}",
                         f"opset{ONNX_OPSET}", "dynbatch" if dynamic_batch else "batch1")
    path = folder / "model.onnx"

    def export() -> None:
        model, loaded_label = (source, label) if isinstance(source, nn.Module) else load_model_and_label(source)
        export_onnx(model, path, model_label=loaded_label, source_sha256=digest, dynamic_batch=dynamic_batch,
                    log=lambda line: None)

    build_entry(folder, export)
    return path


def cached_int8(onnx_path: Path, calibration_count: int = 32) -> Path:
    """An INT8 version of an fp32 export (calibrated on synthetic pairs), made once and kept in the cache.

    An export that is already INT8 is returned as it is.
    """
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    if meta.get("precision") == "int8":
        return Path(onnx_path)
    from endofuse.realtime.engines.calibration import calibration_pairs, preprocess_pair
    from endofuse.realtime.engines.quantize import quantize_int8

    folder = cache_entry("onnx-int8", file_sha256(onnx_path)[:24], f"synthetic{calibration_count}")
    path = folder / "model.int8.onnx"

    def quantize() -> None:
        size = (int(meta["img_size"]), int(meta["img_size"]))
        pairs = [preprocess_pair(p, size) for p in calibration_pairs(None, calibration_count)]
        quantize_int8(onnx_path, path, pairs, log=lambda line: None)

    build_entry(folder, quantize, usable=missing_nbi_path_for(path).is_file() ==
                missing_nbi_path_for(onnx_path).is_file())
    return path


def module_sha256(model: nn.Module) -> str:
    """Content hash of an in-memory model: its config name plus every state-dict tensor."""
    import hashlib

    digest = hashlib.sha256(f"{getattr(model, 'name', type(model).__name__)}|{model.img_size}".encode())
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def _onnx_precision(path: object) -> str:
    """The `precision` metadata of an endofuse ONNX file ("" when unreadable: the engine reports why)."""
    try:
        import onnx

        props = onnx.load(str(path), load_external_data=False).metadata_props
    except Exception:  # noqa: BLE001 - the engine that opens it raises the user-facing error
        return ""
    return next((p.value for p in props if p.key == "precision"), "")


def _suffix(source: object) -> str:
    return Path(source).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""


def _resolve_source(source: str | os.PathLike | nn.Module | None, model_name: str) -> Path | nn.Module:
    if isinstance(source, nn.Module):
        return source
    if source is None:
        if model_name not in MODEL_CHOICES:
            raise InvalidOptionError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_CHOICES)}")
        if model_name != DEMO_MODEL_NAME:
            raise EndofuseError(f"no bundled weights for model {model_name!r} (only {DEMO_MODEL_NAME!r} has demo "
                                f"weights); pass a checkpoint trained with `endofuse train`")
        from endofuse.model import demo_checkpoint_path
        return Path(demo_checkpoint_path())
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES + ONNX_SUFFIXES + IR_SUFFIXES + PLAN_SUFFIXES:
        raise EndofuseError(f"model file {path}: unknown type {path.suffix!r}; expected a .pt/.pth checkpoint, "
                            f"an .onnx file from `endofuse export`, an OpenVINO .xml IR, or a TensorRT .plan/.engine")
    return path


def load_model_and_label(source: Path | nn.Module) -> tuple[nn.Module, str]:
    """(model, label) from an in-memory model or a checkpoint file."""
    if isinstance(source, nn.Module):
        return source, _label_for_module(source)
    if _suffix(source) not in CHECKPOINT_SUFFIXES:
        raise EndofuseError(f"{source} is not a torch checkpoint (.pt/.pth)")
    from endofuse.model import load_checkpoint, read_checkpoint
    model = load_checkpoint(source, map_location="cpu")
    extra = read_checkpoint(source).get("extra") or {}
    return model, checkpoint_label(model, source, extra)


def checkpoint_label(model: nn.Module, path: Path, extra: dict) -> str:
    """What the weights are, for displays: e.g. "tiny (demo weights, synthetic data)"."""
    if extra.get("model_label"):
        return str(extra["model_label"])
    from endofuse.model import demo_checkpoint_path
    try:
        is_demo = Path(path).resolve() == Path(demo_checkpoint_path()).resolve()
    except EndofuseError:
        is_demo = False
    return f"{model.name} (demo weights, synthetic data)" if is_demo else f"{model.name} ({Path(path).name})"


def _label_for_module(model: nn.Module) -> str:
    return f"{getattr(model, 'name', type(model).__name__)} (in-memory weights)"
