"""Foreign-weight converters: reference MM-EndoCL checkpoints -> endofuse `paper` keys.

One filter for every foreign state dict: `CONVERTERS` is a list of
(detect, convert) pairs tried in order (timm's pattern); add a source by adding
a pair. The ImageNet-21k npz start lives in `endofuse.model.pretrained`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch

from endofuse.errors import InvalidInputError

# Reference key (after the encoder prefix) -> ours, applied in order, first match wins.
_ENCODER_RULES: list[tuple[str, str]] = [
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.(weight|bias)$", r"patch_embed.\1"),
    (r"^embeddings\.hybrid_model\.root\.conv\.weight$", "stem.root_conv.weight"),
    (r"^embeddings\.hybrid_model\.root\.gn\.(weight|bias)$", r"stem.root_norm.\1"),
    (r"^embeddings\.hybrid_model\.body\.block(\d+)\.unit(\d+)\.(.+)$", None),  # see _stem_unit_key
    (r"^encoder\.layer\.(\d+)\.attention_norm\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"^encoder\.layer\.(\d+)\.ffn_norm\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"^encoder\.layer\.(\d+)\.ffn\.(fc1|fc2)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^encoder\.layer\.(\d+)\.attn\.(query|key|value|out)\.(weight|bias)$", r"blocks.\1.attn.\2.\3"),
    (r"^encoder\.encoder_norm\.(weight|bias)$", r"norm.\1"),
]
_UNIT_PARTS = {"gn_proj": "downsample.1", "downsample": "downsample.0"}
_MLP_LAYERS = {"0": "fc1", "2": "fc2"}  # nn.Sequential(Linear, GELU, Linear)
_FUSION_MLPS = {
    "feature_extractor_1": "specific_wli",
    "feature_extractor_2": "specific_nbi",
    "feature_extractor_3": "share_wli",
    "feature_extractor_4": "share_nbi",
    "share_fusion": "share_fusion",
    "modal_fusion1": "fuse_specific_wli",
    "modal_fusion2": "fuse_share",
    "modal_fusion3": "fuse_specific_nbi",
}
_ENCODERS = {"transformer": "encoder_wli", "transformer1": "encoder_nbi"}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def _stem_unit_key(block: str, unit: str, rest: str) -> str:
    part, _, leaf = rest.rpartition(".")
    part = _UNIT_PARTS.get(part, part.replace("gn", "norm"))
    return f"stem.stages.{int(block) - 1}.{int(unit) - 1}.{part}.{leaf}"


def _encoder_key(rest: str) -> str | None:
    for pattern, replacement in _ENCODER_RULES:
        match = re.match(pattern, rest)
        if match:
            return _stem_unit_key(*match.groups()) if replacement is None else match.expand(replacement)
    return None


def reference_key_to_ours(key: str) -> str | None:
    """Our name for one reference key, or None if the key is not part of the reference model."""
    head, _, rest = key.partition(".")
    if head in _ENCODERS:
        ours = _encoder_key(rest)
        return None if ours is None else f"{_ENCODERS[head]}.{ours}"
    if head == "decoder1" and re.match(r"^(conv_more|blocks\.\d+\.conv[12])\.[01]\.\w+$", rest):
        return f"decoder.{rest}"
    if head == "segmentation_head1" and re.match(r"^0\.(weight|bias)$", rest):
        return f"decoder.head.{rest[2:]}"
    match = re.match(r"^(\w+?)\.(0|2)\.(weight|bias)$", rest) if head == "fusion" else None
    if match and match.group(1) in _FUSION_MLPS:
        return f"fusion.{_FUSION_MLPS[match.group(1)]}.{_MLP_LAYERS[match.group(2)]}.{match.group(3)}"
    match = re.match(r"^weight_pool([12])\.attention\.(weight|bias)$", rest) if head == "fusion" else None
    if match:
        return f"{'pool_wli' if match.group(1) == '1' else 'pool_nbi'}.score.{match.group(2)}"
    return None


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Strip training wrappers: {'state_dict': ...} / {'model': ...} and DataParallel's 'module.'."""
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise InvalidInputError(f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def is_reference_state_dict(state_dict: Mapping) -> bool:
    return any(str(k).startswith("transformer1.embeddings.") for k in state_dict) and any(
        str(k).startswith("fusion.") for k in state_dict
    )


def convert_reference_state_dict(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """Rename a reference MM-EndoCL state dict to `build_model("paper")` keys (tensors unchanged).

    Raises ValueError listing keys that belong to no part of the reference model.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not is_reference_state_dict(state_dict):
        raise InvalidInputError("not a reference MM-EndoCL state dict "
                                "(no 'transformer1.embeddings.*' / 'fusion.*' keys)")
    converted, unknown = {}, []
    for key, value in state_dict.items():
        ours = reference_key_to_ours(key)
        if ours is None:
            unknown.append(key)
        else:
            converted[ours] = value
    if unknown:
        raise InvalidInputError(f"{len(unknown)} keys of no reference module, e.g. {unknown[:5]}")
    return converted


def reference_model_kwargs(state_dict: Mapping) -> dict:
    """num_classes and img_size implied by a (converted) paper state dict."""
    head = state_dict["decoder.head.weight"]
    tokens = state_dict["encoder_wli.pos_embed"].shape[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise InvalidInputError(f"position embedding has {tokens} tokens, not a square grid")
    return {"num_classes": int(head.shape[0]), "img_size": grid * 16}


def is_endofuse_state_dict(state_dict: Mapping) -> bool:
    return any(str(k).startswith("encoder_wli.") for k in state_dict)


# (detect, convert) pairs, tried in order by `convert_foreign_state_dict`.
CONVERTERS: list[tuple[Callable[[Mapping], bool], Callable[[Mapping], dict]]] = [
    (is_endofuse_state_dict, dict),
    (is_reference_state_dict, convert_reference_state_dict),
]


def convert_foreign_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Detect the source of a state dict by its key names and convert it to ours."""
    state_dict = unwrap_state_dict(obj)
    for detect, convert in CONVERTERS:
        if detect(state_dict):
            return convert(state_dict)
    sample = list(state_dict)[:3]
    raise InvalidInputError(f"unrecognised state dict (first keys {sample}); "
                            f"known sources: endofuse, MM-EndoCL reference")
