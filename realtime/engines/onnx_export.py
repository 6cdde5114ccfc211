"""ONNX export of an endofuse model, with a parity check against torch.

Two files per export: `NAME.onnx` (inputs `wli`, `nbi`; output `logits`) and
the missing-NBI variant `NAME.missing-nbi.onnx` (input `wli` only), both from
the dynamo exporter at opset 18 (TensorRT's ONNX parser accepts 18-20). Each
file carries metadata (model config, input size, source checkpoint hash,
format version) so an engine can refuse a file from another version or model.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from endofuse import __version__
from endofuse.errors import EndofuseError
from endofuse.outputs import atomic_write_bytes

ONNX_OPSET = 18
# Bumped whenever the file layout or metadata meaning changes; engines refuse other values.
ENGINE_FORMAT = "1"
FUSED, MISSING_NBI = "fused", "missing-nbi"
PARITY_TOLERANCE_FP32 = 1e-4


@dataclass
class ExportResult:
    path: Path
    missing_nbi_path: Path
    parity: dict[str, float] = field(default_factory=dict)  # variant -> max |onnx - torch|


class WliOnly(nn.Module):
    """The model's missing-NBI path as a one-input module, so it exports as its own graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wli: torch.Tensor) -> torch.Tensor:
        return self.model(wli, None)


def missing_nbi_path_for(path: str | os.PathLike) -> Path:
    """`x/model.onnx` -> `x/model.missing-nbi.onnx` (also for `.int8.onnx` files)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{MISSING_NBI}{path.suffix}")


def check_metadata(meta: dict[str, str], path: Path, variant: str) -> dict[str, str]:
    """The metadata `export_onnx` wrote, as an engine reads it back: refuses other tools' files, other format
    versions and the wrong graph variant."""
    version = meta.get("endofuse_engine_format")
    if version is None:
        raise EndofuseError(f"model file {path} was not written by `endofuse export` (no endofuse metadata); "
                            f"re-export it from the checkpoint")
    if version != ENGINE_FORMAT:
        raise EndofuseError(f"model file {path} has engine format {version} (endofuse {meta.get('endofuse_version')}), "
                            f"this endofuse reads format {ENGINE_FORMAT}; re-export it with this version")
    if meta.get("variant") != variant:
        raise EndofuseError(f"model file {path} is the {meta.get('variant')!r} variant, expected {variant!r}")
    return meta


def export_onnx(model: nn.Module, out_path: str | os.PathLike, *, model_label: str, source_sha256: str = "",
                dynamic_batch: bool = False, missing_nbi: bool = True, tolerance: float = PARITY_TOLERANCE_FP32,
                log=print) -> ExportResult:
    """Exports `model` (and its missing-NBI variant unless `missing_nbi=False`), checking each against torch.

    Raises EndofuseError when a variant's max abs difference on random inputs exceeds `tolerance`.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = _cpu_eval_copy(model)
    size = model.img_size
    # An example batch of 2 keeps torch.export from specialising the batch dim to 1.
    example_batch = 2 if dynamic_batch else 1
    generator = torch.Generator().manual_seed(0)
    wli, nbi = (torch.rand(example_batch, 3, size, size, generator=generator) for _ in range(2))
    metadata = {
        "endofuse_engine_format": ENGINE_FORMAT, "endofuse_version": __version__,
        "model_name": str(getattr(model, "name", "unknown")), "img_size": str(size),
        "num_classes": str(model.num_classes), "model_label": model_label, "source_sha256": source_sha256,
        "precision": "fp32", "dynamic_batch": "1" if dynamic_batch else "0",
    }
    result = ExportResult(out_path, missing_nbi_path_for(out_path))
    variants = [(FUSED, model, (wli, nbi), ["wli", "nbi"], result.path),
                (MISSING_NBI, WliOnly(model), (wli,), ["wli"], result.missing_nbi_path)][: 2 if missing_nbi else 1]
    for variant, module, inputs, names, path in variants:
        _export_one(module, inputs, names, path, dynamic_batch, {**metadata, "variant": variant})
        result.parity[variant] = parity_max_abs_diff(module, path, dict(zip(names, inputs, strict=True)))
        log(f"parity {variant:<11} max |onnx - torch| = {result.parity[variant]:.3g} (tolerance {tolerance:g}) "
            f"-> {path}")
        if not result.parity[variant] <= tolerance:
            raise EndofuseError(f"ONNX export {path}: {variant} logits differ from torch by "
                                f"{result.parity[variant]:.3g} > {tolerance:g}")
    return result


def parity_max_abs_diff(module: nn.Module, onnx_path: Path, inputs: dict[str, torch.Tensor]) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU, engine session options) logits."""
    from endofuse.realtime.engines.ort_engine import create_session

    with torch.inference_mode():
        expected = module(*inputs.values()).numpy()
    session = create_session(onnx_path, device="cpu")
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    if got.shape != expected.shape:
        raise EndofuseError(f"ONNX export {onnx_path}: output shape {got.shape} != torch {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    model = model if on_cpu else copy.deepcopy(model).cpu()
    return model.eval().float()


def _export_one(module: nn.Module, inputs: tuple, names: list[str], path: Path, dynamic_batch: bool,
                metadata: dict[str, str]) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = {name: {0: batch} for name in names}
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(module, inputs, None, dynamo=True, opset_version=ONNX_OPSET, input_names=names,
                                    output_names=["logits"], dynamic_shapes=dynamic_shapes, optimize=True,
                                    verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    proto.producer_name, proto.producer_version = "endofuse", __version__
    # checked and atomic: a full disk is one line naming the file, a cache reader never sees half a model
    atomic_write_bytes(path, proto.SerializeToString())


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs every skipped op registration; keep the CLI output to our own lines."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
