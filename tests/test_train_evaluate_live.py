"""`endofuse evaluate` writes bit for bit the masks (and overlays) the live path shows for the same frames/engine."""
import cv2
import numpy as np

from endofuse import cli
from endofuse.model import demo_checkpoint_path
from endofuse.model.dataset import load_split, read_image
from endofuse.realtime import OverlayStyle, build_pipeline, segment_pair
from endofuse.realtime.engines import open_engine
from endofuse.realtime.input.sources import MemorySource


def test_evaluate_writes_the_live_masks(tmp_path):
    data, out = tmp_path / "data", tmp_path / "eval"
    assert cli.main(["synth", str(data), "--pairs", "1", "--test-pairs", "3", "--size", "150x170", "--seed", "4"]) == 0
    checkpoint = demo_checkpoint_path()
    assert cli.main(["evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    records = load_split(data, "test")
    wli = [read_image(r.wli) for r in records]
    nbi = [read_image(r.nbi) for r in records]
    written_masks = [cv2.imread(str(out / "masks" / f"{r.wli.stem}.png"), cv2.IMREAD_GRAYSCALE) for r in records]
    written_overlays = [cv2.imread(str(out / "overlays" / f"{r.wli.stem}.png")) for r in records]
    assert any(0 < m.mean() < 255 for m in written_masks), "the demo weights must find tumour in some frame"

    engine = open_engine(checkpoint, backend="torch", device="cpu")
    style = OverlayStyle(hud=False)  # evaluate's overlays carry no HUD
    for i in range(len(records)):
        live = segment_pair(engine, wli[i], nbi[i], style=style)
        np.testing.assert_array_equal(written_masks[i], live.mask * 255, err_msg=f"segment_pair, pair {i}")
        np.testing.assert_array_equal(written_overlays[i], live.overlay, err_msg=f"segment_pair, pair {i}")

    pipeline = build_pipeline(MemorySource(wli, "WLI"), MemorySource(nbi, "NBI"), engine, hud=False, warmup_frames=0)
    results = list(pipeline)
    assert [(r.index, r.nbi_index) for r in results] == [(i, i) for i in range(len(records))]
    for result in results:
        np.testing.assert_array_equal(written_masks[result.index], result.mask * 255,
                                      err_msg=f"pipeline, frame {result.index}")
