"""Weights for the ENTRep classifier: endofuse checkpoints, CLIP checkpoints, the BPE tokenizer.

- `save_classifier` / `load_classifier`: our checkpoint (config + class names +
  weights), read with `torch.load(weights_only=True)`.
- `load_clip_weights(model, FILE)`: an OpenAI or open_clip ViT-B/16 checkpoint
  (plain state dict, `{"state_dict": ...}`, `module.` prefixes, or OpenAI's
  TorchScript archive) into the towers; every tower key must be present with the
  right shape, the vision position table is resized when the grid differs.
- `tokenize(texts, context_length)` / `get_tokenizer()`: CLIP's BPE tokenizer
  (`endofuse.model.clip_tokenizer`, re-exported here for the towers' callers).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F

from endofuse import __version__
from endofuse.errors import EndofuseError, MissingFileError
from endofuse.model.clip_tokenizer import get_tokenizer as get_tokenizer  # re-exported
from endofuse.model.clip_tokenizer import tokenize as tokenize  # re-exported
from endofuse.model.entrep import ENTREP_CONFIGS, EntrepConfig, EntrepModel, build_entrep
from endofuse.outputs import atomic_file

FORMAT = "endofuse-classifier"
FORMAT_VERSION = 1
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def load_failure(exc: Exception) -> str:
    """torch.load's reason in one line (its weights_only refusal is a paragraph of advice to unpickle anyway)."""
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
        return "it holds Python objects other than tensors, which are never unpickled (weights_only=True)"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else 'unreadable'}"


# ---- endofuse classifier checkpoints ----
def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def save_classifier(path: str | os.PathLike, model: EntrepModel, extra: dict | None = None) -> Path:
    """Write `model` atomically; LoRA stays unmerged so training can continue from the file."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": model.name,
        "classes": list(model.classes),
        "config": {k: _plain(v) for k, v in dataclasses.asdict(model.config).items()},
        "lora_merged": any(m.merged for m in model.attention_modules()),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
        "endofuse_version": __version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as handle:  # a full disk: one WriteError naming the file, the old file kept
        torch.save(payload, handle)
    return path


def read_classifier(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file can fail anywhere inside the unpickler
        raise EndofuseError(f"{path}: not a readable checkpoint (truncated or corrupt?): {load_failure(exc)}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (a segmentation checkpoint? classification needs one from `endofuse train --task classify`)"
        raise EndofuseError(f"{path}: not an endofuse classifier checkpoint{hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise EndofuseError(f"{path}: classifier format_version {payload['format_version']} is newer than "
                            f"this endofuse ({__version__}) reads ({FORMAT_VERSION})")
    return payload


def classifier_from_payload(payload: dict, source: str = "checkpoint") -> EntrepModel:
    fields = {f.name for f in dataclasses.fields(EntrepConfig)}
    config = {k: v for k, v in payload["config"].items() if k in fields}
    name = payload["model_name"]
    base = dataclasses.asdict(ENTREP_CONFIGS[name]) if name in ENTREP_CONFIGS else None
    if base is None:
        raise EndofuseError(f"{source}: unknown classifier model {name!r}")
    overrides = {k: v for k, v in config.items() if _plain(base[k]) != v}
    model = build_entrep(name, payload["classes"], **overrides)
    if payload.get("lora_merged"):
        model.merge_lora()
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise EndofuseError(f"{source}: weights do not match classifier {name!r}: {exc}") from exc
    return model.float().eval()


def load_classifier(path: str | os.PathLike) -> EntrepModel:
    """Rebuild a classifier checkpoint (float32, eval mode)."""
    return classifier_from_payload(read_classifier(path), source=str(path))


# ---- OpenAI / open_clip CLIP checkpoints ----
def _read_clip_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
        scripted = any(n.endswith("constants.pkl") for n in names)
        if not scripted:
            raise EndofuseError(f"--pretrained {path}: not a readable CLIP checkpoint: {load_failure(exc)}") from exc
        # OpenAI's own releases are TorchScript archives; torch.jit.load reads their tensors.
        try:
            raw = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as jit_exc:  # noqa: BLE001 - any failure means "not a readable archive"
            raise EndofuseError(f"--pretrained {path}: not a readable CLIP checkpoint: "
                                f"{load_failure(jit_exc)}") from jit_exc
    if isinstance(raw, dict):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise EndofuseError(f"--pretrained {path}: expected a CLIP state dict (name -> tensor)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in raw.items() if k not in OPENAI_EXTRA_KEYS}


def _resize_positions(table: torch.Tensor, grid: int) -> torch.Tensor:
    """A (1 + g*g, D) ViT position table resized (bicubic) to (1 + grid*grid, D)."""
    cls, patches = table[:1], table[1:]
    old = int(round(patches.shape[0] ** 0.5))
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])


def load_clip_weights(model: EntrepModel, path: str | os.PathLike) -> dict:
    """Copy a CLIP checkpoint into the towers; returns {"loaded": n, "ignored": [...]}.

    LoRA, the CLS-fusion weights and the class head are not in CLIP checkpoints
    and keep their initialisation.
    """
    path = Path(path)
    state = _read_clip_state(path)
    own = {k: v for k, v in model.state_dict().items()
           if ".lora." not in k and not k.startswith("classifier.") and "cls_fusion_logits" not in k}
    if "visual.positional_embedding" in state:
        grid = model.img_size // model.config.patch_size
        if state["visual.positional_embedding"].shape[0] != grid * grid + 1:
            state["visual.positional_embedding"] = _resize_positions(state["visual.positional_embedding"], grid)
    if "positional_embedding" in state and state["positional_embedding"].shape[0] > model.config.context_length:
        state["positional_embedding"] = state["positional_embedding"][: model.config.context_length]
    missing = sorted(k for k in own if k not in state)
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        shown = [f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")] if missing else []
        detail = "; ".join(shown + wrong[:5])
        raise EndofuseError(f"--pretrained {path}: does not fit {model.name} ({len(missing)} missing, "
                            f"{len(wrong)} wrong shape: {detail}); expected an OpenAI/open_clip ViT-B-16 checkpoint")
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key].to(target.dtype))
    return {"loaded": len(own), "ignored": sorted(set(state) - set(own))}
