"""endofuse.model: the MM-EndoCL network, its configs, checkpoints and reference losses.

    from endofuse.model import build_model, load_checkpoint
    model = build_model("tiny").eval()           # input: RGB float32 [0, 1], NCHW, model.img_size
    logits = model(wli, nbi)                     # (B, 2, H, W); model(wli, None) without NBI
"""
from endofuse.model.checkpoint import (
    count_parameters,
    demo_checkpoint_path,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from endofuse.model.convert import convert_foreign_state_dict, convert_reference_state_dict
from endofuse.model.mm_endocl import AUX_KEYS, MODEL_CONFIGS, MMEndoCL, MMEndoCLConfig, build_model, list_models
from endofuse.model.pretrained import load_imagenet21k_npz

__all__ = [
    "AUX_KEYS",
    "MODEL_CONFIGS",
    "MMEndoCL",
    "MMEndoCLConfig",
    "build_model",
    "convert_foreign_state_dict",
    "convert_reference_state_dict",
    "count_parameters",
    "demo_checkpoint_path",
    "list_models",
    "load_imagenet21k_npz",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
