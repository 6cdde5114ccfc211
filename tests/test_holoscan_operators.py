"""The endofuse Holoscan operators, each alone and composed, in tiny Holoscan apps on CPU.

References are independent of the graph: the plain `Synchroniser` fed in
time order, `segment.preprocess` + `engine.infer`, `finish_frame` and
`segment_pair` called directly on the same frames.
"""
import importlib.util

import numpy as np
import pytest

if importlib.util.find_spec("holoscan") is None:
    pytest.skip("the [holoscan] extra is not installed", allow_module_level=True)

from endofuse.realtime.holoscan._runtime import import_holoscan  # noqa: E402

import_holoscan()  # loads libcudart.so.12 before `holoscan` is imported

from holoscan.core import Application, Operator, Tensor  # noqa: E402

from endofuse.realtime import FUSED, WLI_ONLY, segment_pair  # noqa: E402
from endofuse.realtime.holoscan import (  # noqa: E402
    EndofuseInferenceOp,
    EndofuseOverlayOp,
    EndofuseRecorderOp,
    EndofuseSyncOp,
)
from endofuse.realtime.holoscan.frames import Segmented, SyncedPair  # noqa: E402
from endofuse.realtime.input.sources import Frame  # noqa: E402
from endofuse.realtime.output.overlay import OverlayStyle  # noqa: E402
from endofuse.realtime.pairing.sync import PAIRED, Synchroniser, SyncPolicy  # noqa: E402
from endofuse.realtime.segment import finish_frame, preprocess  # noqa: E402
from endofuse.realtime.tracing import FrameTrace  # noqa: E402

from conftest import ColourThresholdEngine  # noqa: E402

FPS = 30.0


class ScriptOp(Operator):
    """A third-party-style source: emits `items` one per tick, then stops; `before(i)` may hold a tick."""

    def __init__(self, fragment, *args, items, before=None, **kwargs):
        self.items, self.before, self.sent = list(items), before, 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec):
        spec.output("out")

    def compute(self, op_input, op_output, context):
        if self.sent >= len(self.items):
            return self.stop_execution()
        if self.before is not None and not self.before(self.sent):
            return
        item = self.items[self.sent]
        self.sent += 1
        if item is not None:  # None: nothing sent this tick (a stall)
            op_output.emit(item, "out")


class CollectOp(Operator):
    def __init__(self, fragment, *args, port="in", **kwargs):
        self.port, self.got = port, []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec):
        spec.input(self.port)

    def compute(self, op_input, op_output, context):
        self.got.append(op_input.receive(self.port))


class GraphApp(Application):
    def __init__(self, build):
        self.build = build
        super().__init__()

    def compose(self):
        self.ops = self.build(self)


def run_graph(build):
    app = GraphApp(build)
    app.run()
    return app.ops


def frames(times, sizes=((24, 32),), base=0):
    out = []
    for i, t in enumerate(times):
        h, w = sizes[i % len(sizes)]
        image = np.full((h, w, 3), (base + i * 7) % 256, np.uint8)
        image[: h // 2, :, 2] = 200  # a red half: the colour-threshold engine segments it
        out.append(None if t is None else Frame(i, t, t, image))
    return out


def sync_graph(wli_items, nbi_items, **sync_kwargs):
    """Scripted in lockstep so pairing is deterministic: NBI item i after pair i-1, WLI frame i after NBI item i."""
    def build(app):
        sink = CollectOp(app, port="pair", name="sink")
        nbi = ScriptOp(app, items=nbi_items, before=lambda i: len(sink.got) >= i, name="nbi")
        wli = ScriptOp(app, items=wli_items, before=lambda i: nbi.sent >= min(len(nbi_items), i + 1), name="wli")
        sync = EndofuseSyncOp(app, name="sync", **sync_kwargs)
        app.add_flow(wli, sync, {("out", "wli")})
        app.add_flow(nbi, sync, {("out", "nbi")})
        app.add_flow(sync, sink, {("pair", "pair")})
        return {"sync": sync, "sink": sink}
    return run_graph(build)


def test_sync_op_stall_and_return_match_the_native_synchroniser():
    times = [k / FPS for k in range(16)]
    wli = frames(times)
    nbi = frames([t if not 5 <= k < 11 else None for k, t in enumerate(times)], base=3)  # stalls for 6 frames
    ops = sync_graph(wli, nbi, wli_fps=FPS)
    got = [(p.wli.index, p.pairing.status, None if p.nbi is None else p.nbi.index) for p in ops["sink"].got]
    reference = Synchroniser(SyncPolicy.for_fps(FPS))
    expected = []
    for k, frame in enumerate(wli):
        if nbi[k] is not None:
            reference.add_nbi(nbi[k])
        pairing = reference.pair(frame)
        expected.append((k, pairing.status, None if pairing.nbi is None else pairing.nbi.index))
    assert got == expected
    statuses = [s for _, s, _ in got]
    # hand-checked: 3 periods after the last NBI frame (k=4) fusion stops, it resumes with NBI at k=11
    assert statuses[:5] == [PAIRED] * 5 and statuses[5:8] == ["stale"] * 3
    assert statuses[8:11] == ["missing"] * 3 and statuses[11:] == [PAIRED] * 5


def test_sync_op_reads_rgb_bgr_tensor_and_tensor_map_inputs_of_changing_size():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((20, 30), (20, 30), (36, 44), (36, 44))]
    rgba = np.dstack([images[3], np.full(images[3].shape[:2], 255, np.uint8)])
    wrapped = [images[0], Tensor.as_tensor(images[1]), {"frame": images[2]}, rgba]
    for order in ("rgb", "bgr"):
        ops = sync_graph(wrapped, [Tensor.as_tensor(images[0])] + [None] * 3, channel_order=order, wli_fps=FPS)
        pairs = ops["sink"].got
        assert len(pairs) == 4
        for pair, image in zip(pairs, images, strict=True):
            expected = image[:, :, ::-1] if order == "rgb" else image
            np.testing.assert_array_equal(pair.wli.image, expected)
            assert pair.channel_order == order
        np.testing.assert_array_equal(pairs[0].nbi.image, images[0][:, :, ::-1] if order == "rgb" else images[0])


@pytest.mark.timeout(60)
def test_source_op_emits_indexed_timed_frames_and_an_endless_nbi_stops_with_wli():
    from endofuse.realtime.holoscan import EndofuseSourceOp
    from endofuse.realtime.input.sources import MemorySource

    images = [np.full((8, 10, 3), k, np.uint8) for k in range(5)]

    def build(app):
        wli = EndofuseSourceOp(app, MemorySource(images, "wli", 25.0), role="wli", frames=4, name="wli")
        nbi = EndofuseSourceOp(app, source=MemorySource(images, "nbi", 25.0, loops=None), role="nbi", stop_with=wli,
                               name="nbi")
        wli_sink, nbi_sink = CollectOp(app, port="w", name="wli_sink"), CollectOp(app, port="n", name="nbi_sink")
        app.add_flow(wli, wli_sink, {("frame", "w")})
        app.add_flow(nbi, nbi_sink, {("frame", "n")})
        return {"wli": wli, "got": wli_sink.got}

    ops = run_graph(build)  # returns only because the endless NBI source ends with WLI
    got = ops["got"]
    assert [f.index for f in got] == [0, 1, 2, 3]
    epoch = ops["wli"].epoch
    assert [f.sync_time - epoch for f in got] == pytest.approx([k / 25.0 for k in range(4)])
    for frame, image in zip(got, images, strict=False):
        np.testing.assert_array_equal(frame.image, image)


def make_pair(frame, nbi, status=PAIRED):
    from endofuse.realtime.pairing.sync import Pairing

    pairing = Pairing(frame, nbi, status if nbi is not None else "missing", None if nbi is None else 0.0)
    return SyncedPair(pairing, "bgr", FrameTrace(frame.capture_time))


def test_inference_op_runs_the_engine_on_preprocessed_frames():
    engine = ColourThresholdEngine((16, 16))
    wli, nbi = frames([0.0, 1 / FPS], sizes=((24, 32), (40, 30))), frames([0.0, 1 / FPS], base=9)
    pairs = [make_pair(wli[0], nbi[0]), make_pair(wli[1], None)]

    def build(app):
        src = ScriptOp(app, items=pairs, name="src")
        infer = EndofuseInferenceOp(app, engine=engine, name="inference")
        sink = CollectOp(app, port="segmented", name="sink")
        app.add_flow(src, infer, {("out", "pair")})
        app.add_flow(infer, sink, {("segmented", "segmented")})
        return {"sink": sink}

    got = run_graph(build)["sink"].got
    assert engine.calls == [True, False]  # fused, then the missing-NBI path
    for item, pair in zip(got, pairs, strict=True):
        reference = ColourThresholdEngine((16, 16)).infer(preprocess(pair.wli.image, (16, 16)), None)
        np.testing.assert_array_equal(item.logits, reference)
        assert {"preprocess", "infer"} <= set(item.pair.trace.stages_ms)


@pytest.mark.parametrize("connected", ["overlay", "result"])
def test_overlay_op_outputs_either_port_alone(connected):
    engine = ColourThresholdEngine((16, 16))
    wli = frames([0.0, 1 / FPS, 2 / FPS], sizes=((24, 32), (30, 20)))
    items = []
    for k, frame in enumerate(wli):
        pair = make_pair(frame, frame if k != 1 else None)
        pair.channel_order = "rgb"
        items.append(Segmented(pair, engine.infer(preprocess(frame.image, (16, 16)), None), engine))

    def build(app):
        src = ScriptOp(app, items=items, name="src")
        overlay = EndofuseOverlayOp(app, alpha=0.5, hud=False, name="overlay")
        sink = CollectOp(app, port=connected, name="sink")
        app.add_flow(src, overlay, {("out", "segmented")})
        app.add_flow(overlay, sink, {(connected, connected)})
        return {"sink": sink}

    got = run_graph(build)["sink"].got
    assert len(got) == 3
    style = OverlayStyle(alpha=0.5, hud=False)
    for k, (value, item) in enumerate(zip(got, items, strict=True)):
        mask, overlay, _, _ = finish_frame(item.logits, wli[k].image, style)
        if connected == "overlay":
            np.testing.assert_array_equal(np.from_dlpack(value["overlay"]), overlay[:, :, ::-1])  # back to RGB
        else:
            np.testing.assert_array_equal(value.mask, mask)
            np.testing.assert_array_equal(value.overlay, overlay)
            assert value.mode == (WLI_ONLY if k == 1 else FUSED) and value.index == k
            assert value.nbi_index == (None if k == 1 else k) and value.latency_ms >= 0


def test_recorder_op_writes_video_and_report_with_the_run_keys(tmp_path):
    import cv2

    from endofuse.realtime.pipeline import FrameResult

    results = []
    for k in range(5):
        image = np.full((24, 32, 3), 40 * k, np.uint8)
        results.append(FrameResult(k, image, np.zeros((24, 32), np.uint8), FUSED, {"infer": 1.0}, 2.0 + k, image,
                                   PAIRED if k < 3 else "missing", 0.0 if k < 3 else None, k if k < 3 else None))

    def build(app):
        src = ScriptOp(app, items=results, name="src")
        rec = EndofuseRecorderOp(app, out=str(tmp_path / "o.avi"), report=str(tmp_path / "r.json"), warmup_frames=1,
                                 name="recorder")
        app.add_flow(src, rec, {("out", "result")})
        return {}

    run_graph(build)
    video = cv2.VideoCapture(str(tmp_path / "o.avi"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames"] == 5 and report["paired"] == 3 and report["nbi_missing"] == 2
    assert report["counted_frames"] == 4 and report["latency_ms"]["max"] == pytest.approx(6.0)


def test_third_party_app_every_wli_frame_gives_the_segment_pair_result():
    """Numpy RGB sources of someone else's graph; NBI stalls (nothing sent) and WLI goes on alone."""
    import time

    from endofuse.realtime.engines import open_engine

    engine = open_engine(None, backend="onnxruntime")
    rng = np.random.default_rng(1)
    n, stall = 12, range(4, 8)
    wli = [rng.integers(0, 256, (48, 56, 3), dtype=np.uint8) for _ in range(n)]
    nbi = [None if k in stall else rng.integers(0, 256, (48, 56, 3), dtype=np.uint8) for k in range(n)]
    staleness = 0.05

    def build(app):
        sink = CollectOp(app, port="result", name="sink")
        nbi_op = ScriptOp(app, items=nbi, before=lambda i: len(sink.got) >= i, name="nbi_camera")

        def before(i):
            if i in stall:
                time.sleep(2 * staleness)  # a stalled NBI camera: WLI frames keep coming at their own pace
            return nbi_op.sent >= i + 1

        wli_op = ScriptOp(app, items=wli, before=before, name="wli_camera")
        sync = EndofuseSyncOp(app, wli_fps=FPS, tolerance=0.02, staleness=staleness, channel_order="rgb", name="sync")
        infer = EndofuseInferenceOp(app, engine=engine, name="inference")
        overlay = EndofuseOverlayOp(app, name="overlay")
        app.add_flow(wli_op, sync, {("out", "wli")})
        app.add_flow(nbi_op, sync, {("out", "nbi")})
        app.add_flow(sync, infer, {("pair", "pair")})
        app.add_flow(infer, overlay, {("segmented", "segmented")})
        app.add_flow(overlay, sink, {("result", "result")})
        return {"sink": sink}

    results = run_graph(build)["sink"].got
    assert [r.index for r in results] == list(range(n))
    assert all(results[k].mode == WLI_ONLY for k in list(stall)[1:])  # the first may still fuse (stale)
    assert all(results[k].mode == FUSED for k in range(4)) and results[-1].mode == FUSED
    sent_nbi = [image for image in nbi if image is not None]
    for k, result in enumerate(results):
        nbi_bgr = None if result.nbi_index is None else sent_nbi[result.nbi_index][:, :, ::-1]
        reference = segment_pair(engine, wli[k][:, :, ::-1].copy(), None if nbi_bgr is None else nbi_bgr.copy())
        np.testing.assert_array_equal(result.mask, reference.mask)
        assert result.mode == reference.mode


def test_inference_op_on_a_server_never_waits_and_draws_the_newest_mask():
    """`server=`: frame 0 goes out bare (AI LATE, its answer not back yet), frame 1 with frame 0's mask."""
    import time

    from test_serve_client import FakeServer

    from endofuse.realtime.serve.client import AI_LATE

    server = FakeServer(size=(16, 16))  # answers logits whose class 1 wins where the frame's number > 0
    wli = frames([0.0, 1 / FPS], sizes=((24, 32), (30, 20)))
    pairs = [make_pair(wli[0], wli[0]), make_pair(wli[1], wli[1])]
    try:
        def build(app):
            infer = EndofuseInferenceOp(app, server=server.url, deadline_ms=5000, name="inference")
            def answered(i):  # the source (not the op) holds frame 1 until frame 0's answer is back
                end = time.monotonic() + 10
                while i > 0 and infer.engine.client.newest() is None and time.monotonic() < end:
                    time.sleep(0.01)
                return True

            src = ScriptOp(app, items=pairs, before=answered, name="src")
            overlay = EndofuseOverlayOp(app, hud=False, name="overlay")
            sink = CollectOp(app, port="result", name="sink")
            app.add_flow(src, infer, {("out", "pair")})
            app.add_flow(infer, overlay, {("segmented", "segmented")})
            app.add_flow(overlay, sink, {("result", "result")})
            return {"sink": sink, "infer": infer}

        started = time.perf_counter()
        ops = run_graph(build)
        ops["infer"].engine.close()
    finally:
        server.stop()
    first, second = ops["sink"].got
    assert first.mode == AI_LATE and not first.mask.any()
    np.testing.assert_array_equal(first.overlay, wli[0].image)  # the bare frame
    assert second.mode == FUSED and second.mask.all() and second.extras["remote_age_frames"] == 1
    assert second.extras["mask_source"] == "server" and time.perf_counter() - started < 30
