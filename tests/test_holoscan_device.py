"""Where frames live in the Holoscan operators, and NBI frames lost at the sync port, on CPU.

There is no GPU here: CUDA data is a stand-in object exposing
`__cuda_array_interface__`, and `frames.device_tensor` (torch.from_dlpack on a
GPU) is replaced by one returning a CPU torch tensor. Everything after it (the
tensor path through preprocess, inference, overlay and the output ports) is
the code a GPU runs; the reference is `segment_pair` on the numpy frames.
"""
import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("holoscan") is None:
    pytest.skip("the [holoscan] extra is not installed", allow_module_level=True)

from endofuse.realtime.holoscan._runtime import import_holoscan  # noqa: E402

import_holoscan()

from holoscan.core import ConditionType, IOSpec, Tensor  # noqa: E402
from test_holoscan_operators import CollectOp, ScriptOp, run_graph  # noqa: E402

from endofuse.realtime import segment_pair  # noqa: E402
from endofuse.realtime.holoscan import EndofuseInferenceOp, EndofuseOverlayOp, EndofuseSyncOp  # noqa: E402
from endofuse.realtime.holoscan import frames as holoscan_frames  # noqa: E402
from endofuse.realtime.holoscan.device import host_result  # noqa: E402
from endofuse.realtime.input.sources import Frame  # noqa: E402
from endofuse.realtime.output.overlay import HudInfo, OverlayStyle, draw_hud, draw_hud_tensor  # noqa: E402

from conftest import ColourThresholdEngine  # noqa: E402


class FakeCudaFrame:
    """What a CUDA producer (cupy array, holoscan Tensor on the GPU) exposes; the pixels live in `data`."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.__cuda_array_interface__ = {"shape": data.shape, "typestr": "|u1", "data": (0, False), "version": 3}


class FakeDlpackCuda:
    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0


def test_cuda_data_is_told_apart_from_host_data():
    on_cuda = holoscan_frames.on_cuda
    assert on_cuda(FakeCudaFrame(np.zeros((2, 2, 3), np.uint8))) and on_cuda(FakeDlpackCuda())
    host = np.zeros((2, 2, 3), np.uint8)
    assert not any(on_cuda(v) for v in (host, Tensor.as_tensor(host), torch.from_numpy(host)))
    if not torch.cuda.is_available():  # CPU-only torch: device data cannot stay on a device, it is copied
        assert holoscan_frames.device_tensor(FakeCudaFrame(host)) is None


def test_hud_on_a_tensor_draws_what_draw_hud_draws():
    image = np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    info = HudInfo("FUSED", "onnxruntime", "tiny", 29.5, 12.3, "normal 93%")
    expected = image.copy()
    draw_hud(expected, info)
    tensor = torch.from_numpy(image.copy())
    draw_hud_tensor(tensor, info)
    np.testing.assert_array_equal(tensor.numpy(), expected)


def test_frames_that_arrive_on_the_device_stay_tensors_to_the_overlay_port(monkeypatch, tmp_path):
    monkeypatch.setattr(holoscan_frames, "device_tensor", lambda value: torch.from_numpy(value.data))
    engine = ColourThresholdEngine((16, 16))
    rng = np.random.default_rng(2)
    wli = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    nbi = [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8) for _ in range(3)]

    def build(app):
        sink = CollectOp(app, port="overlay", name="sink")
        results = CollectOp(app, port="result", name="results")
        nbi_op = ScriptOp(app, items=[FakeCudaFrame(f) for f in nbi], before=lambda i: len(sink.got) >= i,
                          name="nbi")
        wli_op = ScriptOp(app, items=[FakeCudaFrame(f) for f in wli], before=lambda i: nbi_op.sent > i, name="wli")
        sync = EndofuseSyncOp(app, wli_fps=30.0, tolerance=1.0, channel_order="rgb", name="sync")
        infer = EndofuseInferenceOp(app, engine=engine, name="inference")
        overlay = EndofuseOverlayOp(app, hud=False, backpressure=("overlay", "result"), name="overlay")
        app.add_flow(wli_op, sync, {("out", "wli")})
        app.add_flow(nbi_op, sync, {("out", "nbi")})
        app.add_flow(sync, infer, {("pair", "pair")})
        app.add_flow(infer, overlay, {("segmented", "segmented")})
        app.add_flow(overlay, sink, {("overlay", "overlay")})
        app.add_flow(overlay, results, {("result", "result")})
        return {"overlays": sink.got, "results": results.got}

    ops = run_graph(build)
    assert len(ops["results"]) == 3
    style = OverlayStyle(hud=False)
    for k, (port, result) in enumerate(zip(ops["overlays"], ops["results"], strict=True)):
        assert all(isinstance(x, torch.Tensor) for x in (result.overlay, result.mask, result.frame))
        reference = segment_pair(engine, wli[k][:, :, ::-1].copy(), nbi[result.nbi_index][:, :, ::-1].copy(),
                                 style=style)
        np.testing.assert_array_equal(result.mask.numpy(), reference.mask)
        np.testing.assert_array_equal(np.from_dlpack(port["overlay"]), reference.overlay[:, :, ::-1])  # RGB again
        host = host_result(result)
        assert isinstance(host.mask, np.ndarray) and isinstance(host.overlay, np.ndarray)
        np.testing.assert_array_equal(host.overlay, reference.overlay)


class BurstOp(ScriptOp):
    """A source that sends a burst of frames in one tick whether or not the receiver has room."""

    def setup(self, spec):
        spec.output("out").connector(IOSpec.ConnectorType.DOUBLE_BUFFER, capacity=8).condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context):
        if self.sent >= len(self.items):
            return self.stop_execution()
        if self.before(self.sent):
            for item in self.items[self.sent:self.sent + self.burst]:
                op_output.emit(item, "out")
            self.sent += self.burst


def test_nbi_frames_replaced_at_the_sync_port_are_counted():
    n, per_wli = 4, 3  # three NBI frames reach the one-slot port at once before each WLI frame: two are replaced
    image = np.zeros((8, 8, 3), np.uint8)
    nbi = []
    for k in range(n * per_wli):
        frame = Frame(k, k / 90.0, k / 90.0, image)
        frame.extras["seq"] = k  # what EndofuseSourceOp stamps
        nbi.append(frame)
    wli = [Frame(k, (per_wli * k + 2) / 90.0, (per_wli * k + 2) / 90.0, image) for k in range(n)]

    def build(app):
        sink = CollectOp(app, port="pair", name="sink")
        nbi_op = BurstOp(app, items=nbi, before=lambda i: len(sink.got) >= i // per_wli, name="nbi")
        nbi_op.burst = per_wli
        wli_op = ScriptOp(app, items=wli, before=lambda i: nbi_op.sent >= per_wli * (i + 1), name="wli")
        sync = EndofuseSyncOp(app, wli_fps=30.0, name="sync")
        app.add_flow(wli_op, sync, {("out", "wli")})
        app.add_flow(nbi_op, sync, {("out", "nbi")})
        app.add_flow(sync, sink, {("pair", "pair")})
        return {"sync": sync, "pairs": sink.got}

    ops = run_graph(build)
    assert [p.nbi.index for p in ops["pairs"]] == [per_wli * k + 2 for k in range(n)]  # the newest each time
    assert ops["sync"].nbi_dropped == n * (per_wli - 1) and ops["sync"].wli_dropped == 0
