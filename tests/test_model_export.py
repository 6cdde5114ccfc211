"""The forward graph exports with torch.onnx.export(dynamo=True, opset 18): pair and missing-NBI graphs."""
import numpy as np
import pytest
import torch

from endofuse.model import build_model
from endofuse.model.benchmark import export_onnx

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("wli_only", [False, True], ids=["pair", "wli-only"])
def test_onnx_export_matches_eager(tmp_path, wli_only):
    torch.manual_seed(0)
    # a shallow tiny keeps the export quick; same blocks and graph as the real configs
    model = build_model("tiny", img_size=64, depth=1, shallow_taps=(1,)).eval()
    path = export_onnx(model, tmp_path / "m.onnx", wli_only=wli_only)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    wli, nbi = torch.rand(1, 3, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    inputs = (wli,) if wli_only else (wli, nbi)
    assert len(session.get_inputs()) == len(inputs)
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})[0]
    with torch.no_grad():
        expected = model(wli, None if wli_only else nbi).numpy()
    assert got.shape == (1, 2, 64, 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
