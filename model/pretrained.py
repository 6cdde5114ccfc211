"""ImageNet-21k start: Google ViT / TransUNet `R50+ViT-B_16.npz` into both encoders.

The npz stores Flax arrays: conv kernels HWIO, dense kernels (in, out), attention
q/k/v kernels (dim, heads, head_dim) and out kernel (heads, head_dim, dim), norm
`scale`/`bias`, and a position embedding with a class token. Conversion:
HWIO -> OIHW, (in, out) -> (out, in), attention reshapes, class token dropped,
position grid resized (bilinear, corners aligned, i.e. scipy `zoom(order=1)`)
when the grid differs. Decoder, fusion and pools keep their random init.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from endofuse.errors import InvalidInputError, MissingFileError
from endofuse.model.mm_endocl import MMEndoCL

_NORM_LEAF = {"scale": "weight", "bias": "bias"}


def _conv(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))


def _dense(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.T))


def _attention_in(a: np.ndarray) -> torch.Tensor:
    """(dim, heads, head_dim) kernel -> (dim_out, dim_in) weight; (heads, head_dim) bias -> (dim,)."""
    return _dense(a.reshape(a.shape[0], -1)) if a.ndim == 3 else torch.from_numpy(a.reshape(-1).copy())


def _attention_out(a: np.ndarray) -> torch.Tensor:
    return _dense(a.reshape(-1, a.shape[-1])) if a.ndim == 3 else torch.from_numpy(a.copy())


def _vector(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.reshape(-1).copy())


def resize_position_embedding(posemb: np.ndarray, num_tokens: int) -> torch.Tensor:
    """(1, T, D) with or without class token -> (1, num_tokens, D); grid resized if needed."""
    tokens = torch.from_numpy(np.asarray(posemb, dtype=np.float32)).reshape(1, -1, posemb.shape[-1])
    if math.isqrt(tokens.shape[1]) ** 2 != tokens.shape[1]:
        tokens = tokens[:, 1:]  # a square grid plus one: drop the class token
    if tokens.shape[1] == num_tokens:
        return tokens.clone()
    old, new = math.isqrt(tokens.shape[1]), math.isqrt(num_tokens)
    if old * old != tokens.shape[1] or new * new != num_tokens:
        raise InvalidInputError(f"position embedding of {tokens.shape[1]} tokens cannot be resized to {num_tokens}")
    grid = tokens.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=True)
    return grid.permute(0, 2, 3, 1).reshape(1, num_tokens, -1)


def npz_to_encoder_state(arrays: Mapping[str, np.ndarray], depth: int, num_tokens: int) -> dict[str, torch.Tensor]:
    """Our `HybridViTEncoder` state (without prefix) from Google/TransUNet npz arrays."""
    state = {
        "pos_embed": resize_position_embedding(arrays["Transformer/posembed_input/pos_embedding"], num_tokens),
        "patch_embed.weight": _conv(arrays["embedding/kernel"]),
        "patch_embed.bias": _vector(arrays["embedding/bias"]),
        "stem.root_conv.weight": _conv(arrays["conv_root/kernel"]),
        "stem.root_norm.weight": _vector(arrays["gn_root/scale"]),
        "stem.root_norm.bias": _vector(arrays["gn_root/bias"]),
        "norm.weight": _vector(arrays["Transformer/encoder_norm/scale"]),
        "norm.bias": _vector(arrays["Transformer/encoder_norm/bias"]),
    }
    for key, value in arrays.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0].startswith("block") and parts[1].startswith("unit"):
            stage, unit = int(parts[0][5:]) - 1, int(parts[1][4:]) - 1
            prefix = f"stem.stages.{stage}.{unit}."
            layer, leaf = parts[2], parts[3]
            if layer == "conv_proj":
                state[prefix + "downsample.0.weight"] = _conv(value)
            elif layer == "gn_proj":
                state[prefix + f"downsample.1.{_NORM_LEAF[leaf]}"] = _vector(value)
            elif layer.startswith("conv"):
                state[prefix + f"{layer}.weight"] = _conv(value)
            elif layer.startswith("gn"):
                state[prefix + f"norm{layer[2:]}.{_NORM_LEAF[leaf]}"] = _vector(value)
    for i in range(depth):
        src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for leaf, name in _NORM_LEAF.items():
            state[dst + f"norm1.{name}"] = _vector(arrays[src + f"LayerNorm_0/{leaf}"])
            state[dst + f"norm2.{name}"] = _vector(arrays[src + f"LayerNorm_2/{leaf}"])
        for j, fc in enumerate(("fc1", "fc2")):
            state[dst + f"mlp.{fc}.weight"] = _dense(arrays[src + f"MlpBlock_3/Dense_{j}/kernel"])
            state[dst + f"mlp.{fc}.bias"] = _vector(arrays[src + f"MlpBlock_3/Dense_{j}/bias"])
        attn = src + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            state[dst + f"attn.{name}.weight"] = _attention_in(arrays[attn + f"{name}/kernel"])
            state[dst + f"attn.{name}.bias"] = _attention_in(arrays[attn + f"{name}/bias"])
        state[dst + "attn.out.weight"] = _attention_out(arrays[attn + "out/kernel"])
        state[dst + "attn.out.bias"] = _attention_out(arrays[attn + "out/bias"])
    return state


def load_imagenet21k_npz(model: MMEndoCL, source: str | os.PathLike | Mapping[str, np.ndarray]) -> int:
    """Load the npz into both encoders (same weights); returns the number of tensors set per encoder.

    Raises ValueError naming the file and the key for a missing key or a shape that
    does not fit the model's config (e.g. a ViT-B npz into `tiny`).
    """
    label = str(source) if not isinstance(source, Mapping) else "npz arrays"
    if isinstance(source, Mapping):
        arrays = source
    else:
        if not Path(source).is_file():
            raise MissingFileError(f"pretrained npz not found: {source}")
        with np.load(source, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    encoder = model.encoder_wli
    try:
        state = npz_to_encoder_state(arrays, len(encoder.blocks), encoder.pos_embed.shape[1])
    except KeyError as exc:
        raise InvalidInputError(f"{label}: missing key {exc} "
                                f"(expected the Google ViT / TransUNet R50+ViT npz format)") from exc
    own = encoder.state_dict()
    for key, value in state.items():
        if key not in own:
            raise InvalidInputError(f"{label}: has {key!r} which model {model.name!r} does not have "
                                    f"(deeper ResNet stage?)")
        if own[key].shape != value.shape:
            raise InvalidInputError(
                f"{label}: {key} has shape {tuple(value.shape)}, model {model.name!r} expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(state))
    if missing:
        raise InvalidInputError(f"{label}: no weights for {len(missing)} encoder tensors of {model.name!r}, "
                                f"e.g. {missing[:3]}")
    with torch.no_grad():
        for enc in (model.encoder_wli, model.encoder_nbi):
            enc.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return len(state)
