"""What flows between the endofuse operators, and conversion of third-party frames.

Third-party Holoscan operators emit frames as numpy / cupy arrays, `holoscan`
Tensors or tensor maps (dicts) with one tensor; capture and replayer operators
emit RGB or RGBA. `to_frame` turns any of them into an endofuse `Frame` (BGR
uint8 HxWx3 on the host, which is what the endofuse stages take), stamped on
arrival when it carries no capture time. `from_bgr` turns an overlay back into
the channel order the frame came in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from endofuse.errors import EndofuseError
from endofuse.realtime.sources import Frame
from endofuse.realtime.sync import Pairing
from endofuse.realtime.tracing import FrameTrace, now

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass
class SyncedPair:
    """`EndofuseSyncOp` -> `EndofuseInferenceOp`: a WLI frame, its NBI frame or None, the decision."""

    pairing: Pairing
    channel_order: str  # of the frames as they arrived; the overlay goes out in the same order
    trace: FrameTrace

    @property
    def wli(self) -> Frame:
        return self.pairing.wli

    @property
    def nbi(self) -> Frame | None:
        return self.pairing.nbi


@dataclass
class Segmented:
    """`EndofuseInferenceOp` -> `EndofuseOverlayOp`: the pair and the engine's logits."""

    pair: SyncedPair
    logits: object
    engine: object
    extras: dict = field(default_factory=dict)


def check_channel_order(order: str) -> str:
    order = str(order).lower()
    if order not in CHANNEL_ORDERS:
        raise EndofuseError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {order!r}")
    return order


def to_host_array(value, where: str) -> np.ndarray:
    """numpy / cupy / holoscan Tensor / one-tensor map -> a numpy array (device data is copied to the host)."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise EndofuseError(f"{where}: expected a tensor map with one tensor, got {sorted(value)}")
        value = next(iter(value.values()))
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__cuda_array_interface__") or _on_cuda(value):
        import cupy  # installed with holoscan-cu12

        return cupy.asnumpy(cupy.from_dlpack(value) if hasattr(value, "__dlpack__") else cupy.asarray(value))
    if hasattr(value, "__dlpack__"):
        return np.from_dlpack(value)
    if hasattr(value, "__array_interface__") or hasattr(value, "__array__"):
        return np.asarray(value)
    raise EndofuseError(f"{where}: cannot read a frame from {type(value).__name__} "
                        "(send a HWC uint8 numpy/cupy array, holoscan Tensor or a one-tensor map)")


def _on_cuda(value) -> bool:
    device = getattr(value, "__dlpack_device__", None)
    return device is not None and device()[0] in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def to_bgr(image: np.ndarray, channel_order: str, where: str) -> np.ndarray:
    """HWC uint8 RGB/RGBA (or BGR/BGRA) -> contiguous BGR uint8 HxWx3."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise EndofuseError(f"{where}: expected an HxWx3 or HxWx4 uint8 frame, got {image.dtype} {image.shape}")
    image = image[:, :, :3]
    if channel_order == "rgb":
        image = image[:, :, ::-1]
    return np.ascontiguousarray(image)


def from_bgr(image: np.ndarray, channel_order: str) -> np.ndarray:
    """A BGR image in `channel_order` (a copy only when channels are swapped)."""
    return np.ascontiguousarray(image[:, :, ::-1]) if channel_order == "rgb" else image


class FrameStamper:
    """Turns whatever arrives on a port into a `Frame`, counting indices and stamping arrival times."""

    def __init__(self, role: str, channel_order: str) -> None:
        self.role, self.channel_order = role, check_channel_order(channel_order)
        self.count = 0

    def __call__(self, value) -> tuple[Frame, str]:
        """The frame and the channel order it arrived in (endofuse frames are BGR)."""
        self.count += 1
        if isinstance(value, Frame):
            return value, "bgr"
        where = f"{self.role} input frame {self.count - 1}"
        image = to_bgr(to_host_array(value, where), self.channel_order, where)
        arrived = now()
        return Frame(self.count - 1, arrived, arrived, image, source=f"{self.role} port"), self.channel_order
