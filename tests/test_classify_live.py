"""`--classifier` in the live pipeline: per-frame class + confidence, HUD line, report class counts, engines."""
import importlib.util

import numpy as np
import pytest
import torch

from endofuse.errors import EndofuseError
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import save_classifier
from endofuse.model.synthetic import make_pair
from endofuse.realtime import Pipeline, PipelineConfig
from endofuse.realtime.classifier import TOWER_THREADS, FrameClassifier, resize_input, resolve_engine
from endofuse.realtime.engines.classifier_export import OnnxTower, OpenVinoTower, cached_image_tower
from endofuse.realtime.input.sources import MemorySource
from endofuse.realtime.output.overlay import HudInfo
from endofuse.realtime.segment import preprocess

from conftest import ColourThresholdEngine, spread_tiny_classifier


@pytest.mark.parametrize("backend", ["torch", pytest.param("auto", marks=pytest.mark.slow)])  # auto: exports
def test_pipeline_classifies_every_frame_like_the_model(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    model = spread_tiny_classifier()
    ckpt = save_classifier(tmp_path / "c.pt", model)
    frames = [make_pair(seed, (60, 68))[0] for seed in range(6)]
    engine = ColourThresholdEngine((40, 48))
    pipeline = Pipeline(MemorySource(frames, "WLI"), None, engine, PipelineConfig(warmup_frames=0),
                        classifier=FrameClassifier.open(ckpt, backend))
    results = list(pipeline)
    report = pipeline.report()
    assert len(results) == 6
    for result in results:
        # reference: the engine's input, resized to the classifier's size, through the torch model
        x = torch.from_numpy(preprocess(result.frame, (40, 48)))
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        with torch.no_grad():
            probs = model(x).softmax(-1)[0].numpy()
        assert result.extras["class"] == model.classes[int(probs.argmax())]
        assert abs(result.extras["confidence"] - float(probs.max())) < 1e-5
    if backend == "auto":  # exported once into the cache, then reused
        towers = list((tmp_path / "cache" / "classifier-onnx").glob("*/image.onnx"))
        assert len(towers) == 1
        stamp = towers[0].stat().st_mtime_ns
        again = FrameClassifier.open(ckpt)
        assert towers[0].stat().st_mtime_ns == stamp and again.label == pipeline.classifier.label
    counts = report["classifier"]["class_counts"]
    assert sum(counts.values()) == 6 and set(counts) == set(model.classes)
    assert counts == {c: sum(r.extras["class"] == c for r in results) for c in model.classes}
    assert "classify" in report["stages_ms"]


def test_hud_shows_the_class_line():
    info = HudInfo("FUSED", "torch", "tiny", 30.0, 12.0, classification="normal 93%")
    assert info.lines()[-1] == "normal 93%"
    assert "normal 93%" not in HudInfo("FUSED", "torch", "tiny").lines()


@pytest.mark.slow
def test_run_command_with_classifier_writes_class_counts(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))  # the classifier's tower is exported there

    from endofuse.cli import main

    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["normal", "lesion"], img_size=32, patch_size=8, vision_width=32,
                         vision_layers=2, vision_heads=4, embed_dim=16, context_length=16, text_width=32,
                         text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2)
    ckpt = save_classifier(tmp_path / "c.pt", model)
    report = tmp_path / "report.json"
    assert main(["run", "--wli", "synthetic", "--frames", "4", "--warmup", "0", "--engine", "torch",
                 "--classifier", str(ckpt), "--report", str(report)]) == 0
    got = json.loads(report.read_text())["classifier"]
    assert got["classes"] == ["normal", "lesion"] and sum(got["class_counts"].values()) == 4
    assert main(["run", "--wli", "synthetic", "--frames", "4", "--classifier", str(ckpt),
                 "--report", str(ckpt)]) == 1  # an output over an input is refused before any work


@pytest.mark.parametrize("shape", [(40, 48), (160, 160), (17, 93), (32, 32)])
def test_resize_input_matches_torch_bilinear(shape):
    x = torch.rand(1, 3, *shape)
    expected = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    for given in (x, x.numpy()):
        got = resize_input(given, 32)
        assert got.shape == (1, 3, 32, 32) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    with pytest.raises(EndofuseError, match=r"\(1, 3, H, W\)"):
        resize_input(np.zeros((2, 3, 8, 8), np.float32), 32)


def test_engine_choice_and_refusals(tmp_path):
    for name in ("c.pt", "c.onnx", "c.xml"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(EndofuseError, match="OpenVINO IR"):
        FrameClassifier.open(tmp_path / "c.xml", "onnxruntime")
    with pytest.raises(EndofuseError, match="needs the .pt checkpoint"):
        FrameClassifier.open(tmp_path / "c.onnx", "torch")
    with pytest.raises(EndofuseError, match="choose one of"):
        FrameClassifier.open(tmp_path / "c.pt", "tensorrt")
    assert resolve_engine("torch", ".pt") == "torch" and resolve_engine("auto", ".xml") == "openvino"
    from endofuse.realtime.engines.factory import openvino_preferred

    assert resolve_engine("auto", ".pt") == ("openvino" if openvino_preferred("cpu") else "onnxruntime")


@pytest.mark.slow
def test_towers_run_on_one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["a", "b"], img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                         vision_heads=4, embed_dim=16, context_length=16, text_width=32, text_layers=1,
                         text_heads=4, cls_layers=(1, 2), lora_rank=2).eval()
    ckpt = save_classifier(tmp_path / "c.pt", model)
    onnx_path = cached_image_tower(ckpt)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).softmax(-1)[0].numpy()
    engines = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    for engine in engines:
        classifier = FrameClassifier.open(onnx_path, engine)
        got = classifier(x)
        assert got.label == model.classes[int(expected.argmax())]
        assert got.confidence == pytest.approx(float(expected.max()), abs=1e-5)
    assert OnnxTower(onnx_path, threads=TOWER_THREADS).session.get_session_options().intra_op_num_threads == 1
    if "openvino" in engines:
        compiled = OpenVinoTower(onnx_path, threads=TOWER_THREADS).compiled
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
