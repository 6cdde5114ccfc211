"""endofuse checkpoints: config name + overrides + weights, loaded with weights_only=True.

Format (a plain dict, so `torch.load(..., weights_only=True)` reads it):
`format="endofuse-checkpoint"`, `format_version`, `model_name`, `model_kwargs`
(`num_classes`, `img_size`, `overrides`), `config` (every number of the config, so
a checkpoint outlives changes to the registry's defaults), `state_dict`, `extra`,
`endofuse_version`.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn as nn

from endofuse import __version__
from endofuse.errors import EndofuseError, MissingFileError
from endofuse.model.mm_endocl import MODEL_CONFIGS, MMEndoCL, build_model
from endofuse.outputs import atomic_file

FORMAT = "endofuse-checkpoint"
FORMAT_VERSION = 1
class CheckpointError(EndofuseError, ValueError):
    """A file that is not a loadable endofuse checkpoint (one line naming it; a ValueError for callers)."""


EXPORT_SUFFIXES = {".onnx": "an ONNX export", ".plan": "a TensorRT plan", ".engine": "a TensorRT plan",
                   ".xml": "an OpenVINO IR"}
DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_synthetic_demo.pt"


def _plain(value):
    """Tuples -> lists so the stored dict holds only weights_only-safe builtins."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def save_checkpoint(path: str | os.PathLike, model: MMEndoCL, extra: dict | None = None, half: bool = False) -> Path:
    """Write `model` atomically (temp file + os.replace); `half=True` stores float weights as fp16."""
    if not isinstance(model, MMEndoCL):
        raise ValueError(f"save_checkpoint expects a model from build_model, got {type(model).__name__}")
    path = Path(path)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        state[key] = tensor.half() if half and tensor.is_floating_point() else tensor
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model.name,
        "model_kwargs": {
            "num_classes": model.num_classes,
            "img_size": model.img_size,
            "overrides": {k: _plain(v) for k, v in model.overrides.items()},
        },
        # every config number, so the checkpoint still loads if the registry's defaults change
        "config": {k: _plain(v) for k, v in dataclasses.asdict(model.config).items()},
        "state_dict": state,
        "extra": dict(extra or {}),
        "endofuse_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # temp file + fsync + rename: a full disk is one line naming the file, and the previous checkpoint stays
    with atomic_file(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict (incl. `extra`); CheckpointError naming the file if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    kind = EXPORT_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        raise CheckpointError(f"{path} is {kind}, not a checkpoint: this command needs the .pt checkpoint it was "
                              "exported from (`endofuse run --checkpoint` runs exports)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated, corrupt or another format): "
                              f"{first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (a reference MM-EndoCL checkpoint? run `endofuse convert-reference`)" if _looks_raw(payload) else ""
        raise CheckpointError(f"{path}: not an endofuse checkpoint (no format={FORMAT!r} entry){hint}")
    absent = [k for k in ("model_name", "model_kwargs", "state_dict") if k not in payload]
    if absent:
        raise CheckpointError(f"{path}: damaged endofuse checkpoint: no {', '.join(absent)} entry")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format_version {payload['format_version']} is newer than this endofuse "
            f"({__version__}) reads ({FORMAT_VERSION})"
        )
    return payload


def _looks_raw(payload) -> bool:
    return isinstance(payload, dict) and any(str(k).startswith(("transformer.", "state_dict", "model"))
                                             for k in payload)


def model_from_checkpoint(payload: dict, source: str = "checkpoint") -> MMEndoCL:
    """Rebuild the stored config and load its weights as float32 (strict)."""
    kwargs = payload["model_kwargs"]
    overrides = dict(kwargs["overrides"])
    if isinstance(payload.get("config"), dict):
        # numbers the registry has changed since the checkpoint was written win over today's defaults
        known = payload["model_name"] in MODEL_CONFIGS
        default = dataclasses.asdict(MODEL_CONFIGS[payload["model_name"]]) if known else {}
        stored = {k: v for k, v in payload["config"].items() if k in default and k != "img_size"}
        overrides = {**{k: v for k, v in stored.items() if _plain(default[k]) != v}, **overrides}
    try:
        model = build_model(payload["model_name"], num_classes=kwargs["num_classes"], img_size=kwargs["img_size"],
                            **overrides)
    except (KeyError, TypeError, ValueError) as exc:  # a forged or edited config
        raise CheckpointError(f"{source}: its model config cannot be built ({type(exc).__name__}: {exc})") from None
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    problem = state_mismatch(model.state_dict(), state)
    if problem:  # torch's own message lists every tensor: hundreds of lines for one wrong config number
        raise CheckpointError(f"{source}: weights do not match model {payload['model_name']!r}: {problem} "
                            "(a damaged or edited checkpoint, or one from another endofuse version)")
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def state_mismatch(expected: dict, stored: dict) -> str:
    """"" when `stored` fits `expected` exactly; else a one-line summary naming the first mismatching tensor."""
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    shapes = [k for k in expected if k in stored and tuple(stored[k].shape) != tuple(expected[k].shape)]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape (e.g. {k}: {tuple(stored[k].shape)} stored, "
                     f"{tuple(expected[k].shape)} expected)")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(parts)


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", expected_name: str | None = None
) -> MMEndoCL:
    """Rebuild the model stored in `path` (float32, eval mode).

    `expected_name` makes a checkpoint of another config a CheckpointError.
    """
    payload = read_checkpoint(path, map_location=map_location)
    if expected_name is not None and payload["model_name"] != expected_name:
        raise CheckpointError(
            f"{path}: checkpoint holds model {payload['model_name']!r}, expected {expected_name!r}"
        )
    return model_from_checkpoint(payload, source=str(path))


def demo_checkpoint_path() -> Path:
    """The bundled tiny demo weights (trained on synthetic data by `endofuse train`)."""
    if not DEMO_WEIGHTS.is_file():
        raise CheckpointError(
            f"bundled demo weights not found at {DEMO_WEIGHTS}; reinstall endofuse or pass a checkpoint"
        )
    return DEMO_WEIGHTS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
