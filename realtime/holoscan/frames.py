"""What flows between the endofuse operators, and conversion of third-party frames.

Third-party Holoscan operators emit frames as numpy / cupy arrays, `holoscan`
Tensors or tensor maps (dicts) with one tensor; capture and replayer operators
emit RGB or RGBA. `FrameStamper` turns any of them into an endofuse `Frame`
with a BGR uint8 HxWx3 image, stamped on arrival when it carries no capture
time. Where the image lives follows where it arrived: host data becomes a
numpy array; CUDA data (`__cuda_array_interface__`, a DLPack CUDA device)
becomes a CUDA torch tensor sharing its memory (DLPack), so it stays on the
GPU through preprocess, inference and overlay (realtime/holoscan/device.py).
Only when torch has no CUDA is device data copied to the host (cupy).
`from_bgr` turns an overlay back into the channel order the frame came in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from endofuse.errors import EndofuseError
from endofuse.realtime.input.sources import Frame
from endofuse.realtime.pairing.sync import Pairing
from endofuse.realtime.tracing import FrameTrace, now

CHANNEL_ORDERS = ("rgb", "bgr")
KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 2, 3, 13  # DLPack device types


@dataclass
class SyncedPair:
    """`EndofuseSyncOp` -> `EndofuseInferenceOp`: a WLI frame, its NBI frame or None, the decision."""

    pairing: Pairing
    channel_order: str  # of the frames as they arrived; the overlay goes out in the same order
    trace: FrameTrace
    threads: list[int] = field(default_factory=list)  # the thread each operator ran on, for hand-off counts
    # one endoscope stream (EndofuseEndoscopeOp): the frame's EndoscopeFrame (mode, crops' model inputs) and the
    # EndoscopeStage that decided it (the overlay op draws inside its content area)
    endoscope: object = None
    endoscope_stage: object = None

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
    classification: object = None  # a realtime.classifier.Classification when the op has a classifier
    remote: object = None  # a serve.client.RemoteFrame when the engine runs on `endofuse serve`


def check_channel_order(order: str) -> str:
    order = str(order).lower()
    if order not in CHANNEL_ORDERS:
        raise EndofuseError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {order!r}")
    return order


def single_tensor(value, where: str):
    """A tensor map with one tensor -> that tensor; anything else as it is."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise EndofuseError(f"{where}: expected a tensor map with one tensor, got {sorted(value)}")
        return next(iter(value.values()))
    return value


def on_cuda(value) -> bool:
    """True for CUDA device memory: a CUDA torch tensor, `__cuda_array_interface__`, a DLPack CUDA device.

    Pinned host memory (kDLCUDAHost) counts as CUDA too: numpy cannot import it, cupy copies it.
    """
    if isinstance(value, torch.Tensor):
        return value.is_cuda
    if getattr(value, "__cuda_array_interface__", None) is not None:
        return True
    device = getattr(value, "__dlpack_device__", None)
    return device is not None and device()[0] in (KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED)


def device_tensor(value) -> torch.Tensor | None:
    """CUDA data as a torch tensor on its device, sharing memory; None when it cannot stay on the device.

    torch cannot import pinned host memory, and a CPU-only torch has no CUDA:
    the caller then copies the frame to the host.
    """
    if isinstance(value, torch.Tensor):
        return value
    dlpack_device = getattr(value, "__dlpack_device__", None)
    if not torch.cuda.is_available() or (dlpack_device is not None and dlpack_device()[0] == KDL_CUDA_HOST):
        return None
    if hasattr(value, "__dlpack__"):
        return torch.from_dlpack(value)  # passes torch's current stream, so the producer's work is ordered first
    return torch.as_tensor(value, device="cuda")  # __cuda_array_interface__ only


def to_host_array(value, where: str) -> np.ndarray:
    """numpy / cupy / holoscan Tensor / torch tensor -> a numpy array (device data is copied to the host)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if on_cuda(value):
        import cupy  # installed with holoscan-cu12

        return cupy.asnumpy(cupy.from_dlpack(value) if hasattr(value, "__dlpack__") else cupy.asarray(value))
    if hasattr(value, "__dlpack__"):
        return np.from_dlpack(value)
    if hasattr(value, "__array_interface__") or hasattr(value, "__array__"):
        return np.asarray(value)
    raise EndofuseError(f"{where}: cannot read a frame from {type(value).__name__} "
                        "(send a HWC uint8 numpy/cupy array, holoscan Tensor or a one-tensor map)")


def to_bgr(image, channel_order: str, where: str):
    """HWC uint8 RGB/RGBA (or BGR/BGRA) numpy array or torch tensor -> contiguous BGR uint8 HxWx3, same kind."""
    tensor = isinstance(image, torch.Tensor)
    uint8 = image.dtype == (torch.uint8 if tensor else np.uint8)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or not uint8:
        raise EndofuseError(f"{where}: expected an HxWx3 or HxWx4 uint8 frame, got {image.dtype} {tuple(image.shape)}")
    image = image[:, :, :3]
    if channel_order == "rgb":
        return image.flip(2) if tensor else np.ascontiguousarray(image[:, :, ::-1])
    return image.contiguous() if tensor else np.ascontiguousarray(image)


def from_bgr(image, channel_order: str):
    """A BGR image (numpy or torch) in `channel_order` (a copy only when channels are swapped)."""
    if channel_order != "rgb":
        return image
    return image.flip(2) if isinstance(image, torch.Tensor) else np.ascontiguousarray(image[:, :, ::-1])


class FrameStamper:
    """Turns whatever arrives on a port into a `Frame`, counting indices and stamping arrival times.

    `lost`: frames missing between two frames from an `EndofuseSourceOp`
    (gaps in their `seq`): replaced at the port before they were read.
    """

    def __init__(self, role: str, channel_order: str) -> None:
        self.role, self.channel_order = role, check_channel_order(channel_order)
        self.count = self.lost = 0
        self._seq: int | None = None

    @property
    def seen(self) -> int:
        """Frames with a `seq` up to the newest received, those lost at the port included."""
        return 0 if self._seq is None else self._seq + 1

    def __call__(self, value) -> tuple[Frame, str]:
        """The frame and the channel order it arrived in (endofuse frames are BGR)."""
        self.count += 1
        if isinstance(value, Frame):
            seq = value.extras.get("seq")
            if seq is not None:
                self.lost += max(0, seq - (-1 if self._seq is None else self._seq) - 1)  # seq counts from 0
                self._seq = seq
            return value, "bgr"
        where = f"{self.role} input frame {self.count - 1}"
        value = single_tensor(value, where)
        kept = device_tensor(value) if on_cuda(value) else None  # on the GPU: stays there
        image = to_bgr(kept if kept is not None else to_host_array(value, where), self.channel_order, where)
        arrived = now()
        return Frame(self.count - 1, arrived, arrived, image, source=f"{self.role} port"), self.channel_order
