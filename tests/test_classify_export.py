"""Classifier towers exported to ONNX and OpenVINO IR agree with torch (LoRA merged into the graph)."""
import json

import numpy as np
import pytest
import torch

from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import save_classifier, tokenize
from endofuse.realtime.engines.classifier_export import (
    ImageTower,
    OnnxTower,
    TextTower,
    export_command,
    read_metadata,
    text_path_for,
)


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["normal", "lesion"], img_size=32, patch_size=8, vision_width=32,
                         vision_layers=2, vision_heads=4, embed_dim=16, context_length=16, text_width=32,
                         text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2).eval()
    with torch.no_grad():
        for p in model.lora_parameters():  # non-zero deltas, so the merge is exercised
            p.normal_(0, 0.2)
    return model, save_classifier(tmp_path_factory.mktemp("ckpt") / "c.pt", model)


def check_towers(model, image_tower, text_tower):
    images = torch.rand(3, 3, 32, 32)  # another batch size than the export example
    with torch.no_grad():
        logits, emb = ImageTower(model)(images)
    got_logits, got_emb = image_tower.run(images.numpy())
    np.testing.assert_allclose(got_logits, logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_emb, emb.numpy(), atol=1e-5)
    tokens = tokenize(["a small lesion", "an NBI frame of normal mucosa", "x"], 16)
    with torch.no_grad():
        text = TextTower(model)(tokens).numpy()
    np.testing.assert_allclose(text_tower.run(tokens.numpy())[0], text, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_parity(model_and_checkpoint, tmp_path):
    model, ckpt = model_and_checkpoint
    out = tmp_path / "cls.onnx"
    from endofuse.cli import main

    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert json.loads(meta["classes"]) == ["normal", "lesion"] and meta["img_size"] == "32"
    check_towers(model, OnnxTower(out), OnnxTower(text_path_for(out)))


@pytest.mark.slow
def test_openvino_export_parity(model_and_checkpoint, tmp_path):
    pytest.importorskip("endofuse.realtime.engines.openvino_env", reason="the OpenVINO engine is not in this build")
    from endofuse.realtime.engines.classifier_export import OpenVinoTower

    model, ckpt = model_and_checkpoint
    xml = tmp_path / "cls.xml"
    assert export_command(ckpt, "openvino", xml) == 0
    check_towers(model, OpenVinoTower(xml), OpenVinoTower(text_path_for(xml)))
