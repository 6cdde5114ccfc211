"""`--classifier` in the live pipeline: per-frame class + confidence, HUD line, report class counts."""
import pytest
import torch

from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import save_classifier
from endofuse.model.synthetic import make_pair
from endofuse.realtime import Pipeline, PipelineConfig
from endofuse.realtime.classifier import FrameClassifier
from endofuse.realtime.overlay import HudInfo
from endofuse.realtime.segment import preprocess
from endofuse.realtime.sources import MemorySource

from conftest import ColourThresholdEngine


def test_pipeline_classifies_every_frame_like_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["normal", "small_lesion", "large_lesion"], img_size=32, patch_size=8,
                         vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16, context_length=16,
                         text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)  # spread the predictions over the classes
    ckpt = save_classifier(tmp_path / "c.pt", model)
    frames = [make_pair(seed, (60, 68))[0] for seed in range(6)]
    engine = ColourThresholdEngine((40, 48))
    pipeline = Pipeline(MemorySource(frames, "WLI"), None, engine, PipelineConfig(warmup_frames=0),
                        classifier=FrameClassifier.open(ckpt))
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
    counts = report["classifier"]["class_counts"]
    assert sum(counts.values()) == 6 and set(counts) == set(model.classes)
    assert counts == {c: sum(r.extras["class"] == c for r in results) for c in model.classes}
    assert "classify" in report["stages_ms"]


def test_hud_shows_the_class_line():
    info = HudInfo("FUSED", "torch", "tiny", 30.0, 12.0, classification="normal 93%")
    assert info.lines()[-1] == "normal 93%"
    assert "normal 93%" not in HudInfo("FUSED", "torch", "tiny").lines()


@pytest.mark.slow
def test_run_command_with_classifier_writes_class_counts(tmp_path):
    import json

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
