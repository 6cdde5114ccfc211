"""endofuse as NVIDIA Holoscan 4.x operators (extra `[holoscan]`).

    from endofuse.realtime.holoscan import EndofuseSyncOp, EndofuseInferenceOp, EndofuseOverlayOp
    sync = EndofuseSyncOp(self, name="sync", wli_fps=30.0, channel_order="rgb")
    infer = EndofuseInferenceOp(self, name="infer", engine="model.onnx")
    overlay = EndofuseOverlayOp(self, name="overlay")
    self.add_flow(wli_capture, sync, {("signal", "wli")})
    self.add_flow(nbi_capture, sync, {("signal", "nbi")})
    self.add_flow(sync, infer, {("pair", "pair")})
    self.add_flow(infer, overlay, {("segmented", "segmented")})
    self.add_flow(overlay, holoviz, {("overlay", "receivers")})

One endoscope stream (WLI and NBI switched by hand): `EndofuseEndoscopeOp`
(input `frame`, output `pair`) in place of the sync operator.

Importing this package loads libcudart.so.12 (from the nvidia-cuda-runtime-cu12
wheel when no system CUDA exists) before importing `holoscan`.
"""
from endofuse.realtime.holoscan.endoscope import EndofuseEndoscopeOp
from endofuse.realtime.holoscan.operators import (
    EndofuseInferenceOp,
    EndofuseOverlayOp,
    EndofuseSourceOp,
    EndofuseSyncOp,
)
from endofuse.realtime.holoscan.recorder import EndofuseRecorderOp

__all__ = ["EndofuseEndoscopeOp", "EndofuseInferenceOp", "EndofuseOverlayOp", "EndofuseRecorderOp", "EndofuseSourceOp",
           "EndofuseSyncOp"]
