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
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from endofuse import __version__
from endofuse.errors import EndofuseError
from endofuse.model.mm_endocl import MODEL_CONFIGS, MMEndoCL, build_model

FORMAT = "endofuse-checkpoint"
FORMAT_VERSION = 1
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict (incl. `extra`); ValueError naming the file if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (a reference MM-EndoCL checkpoint? run `endofuse convert-reference`)" if _looks_raw(payload) else ""
        raise ValueError(f"{path}: not an endofuse checkpoint (no format={FORMAT!r} entry){hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {payload['format_version']} is newer than this endofuse "
            f"({__version__}) reads ({FORMAT_VERSION})"
        )
    return payload


def _looks_raw(payload) -> bool:
    return isinstance(payload, dict) and any(str(k).startswith(("transformer.", "state_dict", "model")) for k in payload)


def model_from_checkpoint(payload: dict, source: str = "checkpoint") -> MMEndoCL:
    """Rebuild the stored config and load its weights as float32 (strict)."""
    kwargs = payload["model_kwargs"]
    overrides = dict(kwargs["overrides"])
    if isinstance(payload.get("config"), dict):
        # numbers the registry has changed since the checkpoint was written win over today's defaults
        default = dataclasses.asdict(MODEL_CONFIGS[payload["model_name"]]) if payload["model_name"] in MODEL_CONFIGS else {}
        stored = {k: v for k, v in payload["config"].items() if k in default and k != "img_size"}
        overrides = {**{k: v for k, v in stored.items() if _plain(default[k]) != v}, **overrides}
    model = build_model(payload["model_name"], num_classes=kwargs["num_classes"], img_size=kwargs["img_size"], **overrides)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not match model {payload['model_name']!r}: {exc}") from exc
    return model.float().eval()


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", expected_name: str | None = None
) -> MMEndoCL:
    """Rebuild the model stored in `path` (float32, eval mode).

    `expected_name` makes a checkpoint of another config a ValueError.
    """
    payload = read_checkpoint(path, map_location=map_location)
    if expected_name is not None and payload["model_name"] != expected_name:
        raise ValueError(
            f"{path}: checkpoint holds model {payload['model_name']!r}, expected {expected_name!r}"
        )
    return model_from_checkpoint(payload, source=str(path))


def demo_checkpoint_path() -> Path:
    """The bundled tiny demo weights (trained on synthetic data by `endofuse train`)."""
    if not DEMO_WEIGHTS.is_file():
        raise EndofuseError(
            f"bundled demo weights not found at {DEMO_WEIGHTS}; reinstall endofuse or pass a checkpoint"
        )
    return DEMO_WEIGHTS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
