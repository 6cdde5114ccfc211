"""The torch engine: the model itself, in eval mode, without autograd.

Options that change speed but never results (beyond float rounding):
`channels_last` (NHWC convolutions), `compile` (torch.compile), and on CUDA
`cuda_graphs` (each input shape is captured once and replayed, which removes
the per-kernel launch cost that dominates a small model's latency).
"""
from __future__ import annotations

import torch
from torch import nn

from endofuse.errors import InvalidOptionError
from endofuse.realtime.engines.base import Engine


class TorchEngine(Engine):
    """Runs an `endofuse.model` network directly through PyTorch."""

    native = "torch"

    def __init__(self, model: nn.Module, *, model_label: str, device: str | torch.device | None = None,
                 compile: bool = False, channels_last: bool = False, cuda_graphs: bool | None = None) -> None:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        super().__init__(input_size=(model.img_size, model.img_size), num_classes=model.num_classes,
                         model_label=model_label, device=str(device))
        self.name = "torch-compile" if compile else "torch"
        self.channels_last = channels_last
        model = model.eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._forward = torch.compile(model, dynamic=False) if compile else model
        use_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if use_graphs and device.type != "cuda":
            raise InvalidOptionError("cuda_graphs needs a CUDA device")
        self._graphs: dict[tuple, _CapturedCall] | None = {} if use_graphs else None

    def _prepare(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or not self.channels_last:
            return x
        return x.contiguous(memory_format=torch.channels_last)

    def _run(self, wli: torch.Tensor, nbi: torch.Tensor | None) -> torch.Tensor:
        wli, nbi = self._prepare(wli), self._prepare(nbi)
        if self._graphs is None:
            with torch.inference_mode():
                return self._forward(wli, nbi)
        key = (tuple(wli.shape), nbi is not None)
        call = self._graphs.get(key)
        if call is None:
            call = self._graphs[key] = _CapturedCall(self._forward, wli, nbi)
        return call(wli, nbi)


class _CapturedCall:
    """One CUDA graph for one input shape: copy inputs in, replay, clone the output out."""

    def __init__(self, forward, wli: torch.Tensor, nbi: torch.Tensor | None, warmup_iterations: int = 3) -> None:
        self.static_wli = wli.clone()
        self.static_nbi = None if nbi is None else nbi.clone()
        # Warm up on a side stream so lazy initialisation (cuDNN plans, allocator) is not captured.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(warmup_iterations):
                forward(self.static_wli, self.static_nbi)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_out = forward(self.static_wli, self.static_nbi)

    def __call__(self, wli: torch.Tensor, nbi: torch.Tensor | None) -> torch.Tensor:
        self.static_wli.copy_(wli)
        if nbi is not None:
            self.static_nbi.copy_(nbi)
        self.graph.replay()
        # The output buffer is overwritten by the next replay: hand the caller its own copy.
        return self.static_out.clone()
