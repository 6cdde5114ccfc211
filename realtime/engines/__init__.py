"""Engines: one interface over torch, ONNX Runtime (fp32 / INT8) and TensorRT.

    engine = open_engine("runs/tiny/best.pt", backend="onnxruntime")
    logits = engine.infer(wli, nbi)      # (B, 3, H, W) float32 in [0, 1] -> (B, C, H, W)
    logits = engine.infer(wli, None)     # the missing-NBI path
"""
from endofuse.realtime.engines.base import Engine
from endofuse.realtime.engines.factory import BACKENDS, MODEL_CHOICES, open_engine, resolve_backend, tensorrt_available

__all__ = ["BACKENDS", "MODEL_CHOICES", "Engine", "open_engine", "resolve_backend", "tensorrt_available"]
