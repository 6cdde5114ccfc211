"""INT8 for CPU: ONNX Runtime static quantisation, calibrated on real frames.

Weights are quantised per output channel to int8 and activations per tensor to
uint8 (the u8 x s8 pairing that x86 VNNI instructions multiply natively, so no
reduced range is needed on VNNI CPUs). Calibration runs the fp32 graph on
frame pairs and keeps the min/max of every activation.

The graph is written in ONNX Runtime's operator form (QLinearConv, QGemm), not
QDQ: on the CPU the QDQ form left a Quantize/DequantizeLinear pair around every
conv and GEMM and measured 5-10 % slower (paper model: 1.93x fp32 vs 1.78x).
Only GEMMs with a constant weight are quantised; the attention products
(q @ k^T, p @ v) have two activation inputs and stay fp32 for accuracy.
Both variants of an export are quantised; the result is tagged
`precision=int8`, so ONNX Runtime engines built on it are named "onnxruntime-int8".
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from endofuse.errors import EndofuseError
from endofuse.realtime.engines.onnx_export import MISSING_NBI, missing_nbi_path_for

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]  # the FLOPs; norms, softmax and GELU stay fp32 for accuracy


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration: list[tuple[np.ndarray, np.ndarray]], log=print) -> Path:
    """Quantises `fp32_path` (and its missing-NBI sibling, if any) into `out_path`; returns `out_path`.

    `calibration` holds preprocessed (wli, nbi) batches at the model's input size.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise EndofuseError("INT8 calibration needs at least one frame pair")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(fp32_path, out_path, ("wli", "nbi"))]
    if missing_nbi_path_for(fp32_path).is_file():
        jobs.append((missing_nbi_path_for(fp32_path), missing_nbi_path_for(out_path), ("wli",)))
    for source, target, names in jobs:
        # the missing-NBI graph takes only the first of each (wli, nbi) pair
        feeds = [dict(zip(names, pair, strict=False)) for pair in calibration]
        with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
            prepared = Path(tmp) / "prepared.onnx"
            # ONNX shape inference + graph fusions first, as ORT's quantisation guide asks. Symbolic shape
            # inference is skipped: it fails on dynamic-batch exports (and then drops temp files in the cwd),
            # and the exporter's value_info already carries the shapes.
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), _FeedReader(feeds),
                            quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                            op_types_to_quantize=QUANTIZED_OPS, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"MatMulConstBOnly": True})
            _retag(source, Path(tmp) / "int8.onnx", target)
        variant = MISSING_NBI if len(names) == 1 else "fused"
        log(f"int8 {variant:<11} calibrated on {len(feeds)} pairs -> {target}")
    return out_path


class _FeedReader:
    """The CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _retag(fp32_source: Path, quantized: Path, target: Path) -> None:
    """Copies the endofuse metadata onto the quantised model, marked int8, written atomically."""
    props = {p.key: p.value for p in onnx.load(str(fp32_source), load_external_data=False).metadata_props}
    if "endofuse_engine_format" not in props:
        raise EndofuseError(f"{fp32_source} was not written by `endofuse export`; export it first")
    proto = onnx.load(str(quantized))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**props, "precision": "int8"})
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, target)


@contextlib.contextmanager
def _quiet_quantizer():
    """ORT's quantiser logs a warning per 1-D weight it skips; users need none of them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
