"""A Triton Inference Server model repository for the exported models.

For users who outgrow one machine: one Triton server batches frames from many
streams. Layout written by `write_triton_repository(out, onnx_path)`:

    out/endofuse/config.pbtxt               inputs wli + nbi, output logits
    out/endofuse/1/model.onnx
    out/endofuse_missing_nbi/config.pbtxt   input wli only (NBI dropped out)
    out/endofuse_missing_nbi/1/model.onnx
    out/endofuse_plan/...                   only when TensorRT plans are given (platform tensorrt_plan)

Each model uses dynamic batching with a short queue delay (latency first:
a frame waits at most `max_queue_delay_us` for company) and warms up with zero
and random batches before serving. `--fp16` asks Triton's ONNX Runtime backend
to run the graph through its TensorRT accelerator in FP16 on the server's GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from endofuse.errors import EndofuseError, InvalidInputError, MissingFileError
from endofuse.outputs import atomic_write_bytes, atomic_write_text
from endofuse.realtime.engines.onnx_export import missing_nbi_path_for
from endofuse.realtime.engines.tritonserver_schema import parse_model_config

PLATFORM_FILES = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
DEFAULT_MODEL_NAME = "endofuse"
MODEL_VERSION = 1


class Enum(str):
    """A protobuf enum value: written without quotes."""


@dataclass(frozen=True)
class TritonSettings:
    max_batch_size: int = 8
    max_queue_delay_us: int = 500  # half a millisecond: at 30 fps a frame's budget is 33 ms
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    instance_count: int = 1
    fp16: bool = False


def to_pbtxt(fields: dict, indent: int = 0) -> str:
    """Protobuf text format for nested dicts/lists (dict = message, list of dicts = repeated message)."""
    pad, lines = "  " * indent, []
    for name, value in fields.items():
        if isinstance(value, dict):
            lines += [f"{pad}{name} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            blocks = [f"{pad}  {{\n{to_pbtxt(item, indent + 2)}\n{pad}  }}" for item in value]
            lines += [f"{pad}{name} [", ",\n".join(blocks), f"{pad}]"]
        elif isinstance(value, list):
            lines.append(f"{pad}{name}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(int(value))


def model_config(name: str, platform: str, inputs: dict[str, list[int]], outputs: dict[str, list[int]],
                 settings: TritonSettings, gpu_only: bool) -> dict:
    """The ModelConfig for one model; dims exclude the batch dim (max_batch_size > 0)."""
    tensor = lambda n, dims: {"name": n, "data_type": Enum("TYPE_FP32"), "dims": dims}  # noqa: E731
    warm = lambda how: {n: {"data_type": Enum("TYPE_FP32"), "dims": d, how: True} for n, d in inputs.items()}  # noqa: E731
    config = {
        "name": name,
        "platform": platform,
        # pinned: Triton's default (latest 1) would serve any higher-numbered folder found beside ours
        "version_policy": {"specific": {"versions": [MODEL_VERSION]}},
        "max_batch_size": settings.max_batch_size,
        "input": [tensor(n, d) for n, d in inputs.items()],
        "output": [tensor(n, d) for n, d in outputs.items()],
        "dynamic_batching": {
            "preferred_batch_size": [b for b in settings.preferred_batch_sizes if b <= settings.max_batch_size],
            "max_queue_delay_microseconds": settings.max_queue_delay_us,
        },
        "instance_group": [{"count": settings.instance_count, "kind": Enum("KIND_GPU" if gpu_only else "KIND_AUTO")}],
        "model_warmup": [
            {"name": "zeros_batch1", "batch_size": 1,
             "inputs": [{"key": n, "value": v} for n, v in warm("zero_data").items()]},
            {"name": f"random_batch{settings.max_batch_size}", "batch_size": settings.max_batch_size,
             "inputs": [{"key": n, "value": v} for n, v in warm("random_data").items()]},
        ],
    }
    if settings.fp16 and platform == "onnxruntime_onnx":
        trt = {"name": "tensorrt", "parameters": [{"key": "precision_mode", "value": "FP16"}]}
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [trt]}}
    return config


def onnx_signature(path: Path) -> tuple[dict[str, list], dict[str, list]]:
    """(inputs, outputs) of an ONNX file as {name: [dim or dim-name, ...]}, batch dim included."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {v.name: dims(v) for v in graph.input}, {v.name: dims(v) for v in graph.output}


def write_triton_repository(out_dir: str | Path, onnx_path: str | Path, *, settings: TritonSettings = TritonSettings(),
                            plans: dict[str, Path] | None = None, name: str = DEFAULT_MODEL_NAME) -> list[Path]:
    """Writes the repository (see the module docstring); returns the config files written.

    `onnx_path` must be a dynamic-batch export (its missing-NBI sibling is added when present);
    `plans` maps "fused"/"missing-nbi" to TensorRT plans built for the server's GPU.
    """
    out_dir, onnx_path = Path(out_dir), Path(onnx_path)
    wli_only = missing_nbi_path_for(onnx_path)
    # (model name, file to serve, platform, the ONNX graph whose signature the config declares)
    models = [(name, onnx_path, "onnxruntime_onnx", onnx_path),
              (f"{name}_missing_nbi", wli_only, "onnxruntime_onnx", wli_only)]
    for variant, plan in (plans or {}).items():
        fused = variant == "fused"
        models.append((f"{name}_plan" if fused else f"{name}_missing_nbi_plan", Path(plan), "tensorrt_plan",
                       onnx_path if fused else wli_only))
    if not onnx_path.is_file():
        raise MissingFileError(f"ONNX model not found: {onnx_path}")
    written = []
    for model_name, source, platform, signature_source in models:
        if not source.is_file():
            continue  # an export without the missing-NBI variant
        inputs, outputs = onnx_signature(signature_source)
        if any(isinstance(d[0], int) for d in (*inputs.values(), *outputs.values())):
            raise EndofuseError(f"{signature_source} has a fixed batch size; Triton's dynamic batching needs an "
                                f"export with --dynamic-batch")
        strip = lambda sig: {k: [int(x) for x in v[1:]] for k, v in sig.items()}  # noqa: E731
        config = model_config(model_name, platform, strip(inputs), strip(outputs), settings,
                              gpu_only=platform == "tensorrt_plan")
        folder = out_dir / model_name
        version = folder / str(MODEL_VERSION)
        version.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(version / PLATFORM_FILES[platform], source.read_bytes())
        atomic_write_text(folder / "config.pbtxt", to_pbtxt(config) + "\n")
        written.append(folder / "config.pbtxt")
    check_repository(out_dir)
    return written


def served_versions(config, folder: Path) -> list[int]:
    """The versions Triton loads for a model: its version_policy over the numbered folders present."""
    present = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy if config.HasField("version_policy") else None
    if policy is not None and policy.HasField("specific"):
        return sorted(v for v in policy.specific.versions if v in present)
    keep = policy.latest.num_versions if policy is not None and policy.HasField("latest") else 1
    return present[-max(1, keep):] if present else []  # Triton's default: the latest one


def check_repository(root: str | Path) -> list[str]:
    """Checks every model of a repository as Triton would at load time; returns the model names.

    Raises ValueError naming the file and the problem: schema violations, a name that is not the
    folder's, a missing model file, dims or tensor names that disagree with the ONNX graph,
    warm-up samples that do not cover the inputs, preferred batch sizes above max_batch_size.
    """
    root = Path(root)
    names = []
    for config_path in sorted(root.glob("*/config.pbtxt")):
        config = parse_model_config(config_path.read_text(encoding="utf-8"), str(config_path))
        fail = lambda why, path=config_path: ValueError(f"{path}: {why}")  # noqa: E731
        if config.name != config_path.parent.name:
            raise fail(f"name {config.name!r} is not the folder name {config_path.parent.name!r}")
        if config.platform not in PLATFORM_FILES:
            raise fail(f"platform {config.platform!r} is not one of {sorted(PLATFORM_FILES)}")
        served = served_versions(config, config_path.parent)
        if served != [MODEL_VERSION]:
            raise fail(f"Triton would serve version(s) {served} of {config.name}, not the exported version "
                       f"{MODEL_VERSION} (stale version folders? pin version_policy)")
        model_file = config_path.parent / str(MODEL_VERSION) / PLATFORM_FILES[config.platform]
        if not model_file.is_file():
            raise fail(f"model file {model_file} is missing")
        inputs = {t.name: list(t.dims) for t in config.input}
        outputs = {t.name: list(t.dims) for t in config.output}
        if config.platform == "onnxruntime_onnx":
            graph_in, graph_out = onnx_signature(model_file)
            for kind, declared, actual in (("input", inputs, graph_in), ("output", outputs, graph_out)):
                expected = {k: v[1:] if config.max_batch_size > 0 else v for k, v in actual.items()}
                if declared != expected:
                    raise fail(f"{kind}s {declared} do not match the ONNX graph {expected} of {model_file}")
        if config.max_batch_size > 0 and config.HasField("dynamic_batching"):
            too_big = [b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size]
            if too_big:
                raise fail(f"preferred_batch_size {too_big} exceeds max_batch_size {config.max_batch_size}")
        for sample in config.model_warmup:
            warm = {k: list(v.dims) for k, v in sample.inputs.items()}
            if warm != inputs:
                raise fail(f"warm-up sample {sample.name!r} covers {warm}, the model's inputs are {inputs}")
            if not 1 <= sample.batch_size <= max(1, config.max_batch_size):
                raise fail(f"warm-up sample {sample.name!r} has batch_size {sample.batch_size}")
        names.append(config.name)
    if not names:
        raise InvalidInputError(f"{root}: no */config.pbtxt found: not a Triton model repository")
    return names
