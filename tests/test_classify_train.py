"""`endofuse synth --classes`, `train/evaluate --task classify` end to end, resume, the loss terms."""
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from endofuse.cli import main
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import read_classifier, tokenize
from endofuse.train.classify import classify_losses


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(out), "--pairs", "3", "--test-pairs", "3", "--size", "40x40", "--classes"]) == 0
    return out


@pytest.mark.slow
def test_train_resume_evaluate(folder, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--task", "classify", "--data", str(folder), "--out", str(run), "--no-progress",
            "--batch-size", "4"]
    assert main(base + ["--epochs", "1"]) == 0
    assert main(base + ["--epochs", "1"]) == 1  # an existing run needs --resume
    assert "pass --resume" in capsys.readouterr().err
    assert main(base + ["--epochs", "2", "--resume"]) == 0
    extra = read_classifier(run / "last.pt")["extra"]
    assert extra["epoch"] == 2 and [row["epoch"] for row in extra["history"]] == [1, 2]
    with open(run / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert json.loads((run / "config.json").read_text())["classes"] == ["large_lesion", "normal", "small_lesion"]

    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "classify", "--data", str(folder), "--checkpoint", str(run / "best.pt"),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "i2i", "t2i", "confusion_matrix"} <= set(metrics)
    for key in ("i2i", "t2i"):
        assert set(metrics[key]) == {"recall@1", "recall@5", "mrr", "queries"} and metrics[key]["queries"] == 6
    per_image = metrics["per_image"]
    assert metrics["accuracy"] == pytest.approx(sum(p["label"] == p["predicted"] for p in per_image) / 6)
    assert (out / "confusion_matrix.png").stat().st_size > 1000


def test_segmentation_flags_are_refused(folder, tmp_path, capsys):
    assert main(["train", "--task", "classify", "--data", str(folder), "--out", str(tmp_path / "r"),
                 "--epochs", "1", "--ablate", "da"]) == 1
    assert "--ablate: segmentation-only" in capsys.readouterr().err


def test_loss_terms_against_plain_references():
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", ["a", "b", "c"], img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                         vision_heads=4, embed_dim=16, context_length=16, text_width=32, text_layers=1,
                         text_heads=4, cls_layers=(1, 2), slerp_prob=0.0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 2])
    tokens = tokenize(["x a", "x b", "x a", "x c"], 16)
    terms = classify_losses(model, images, labels, tokens)
    z = F.normalize(model.encode_image(images), dim=-1)
    t = F.normalize(model.encode_text(tokens), dim=-1)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(model.classifier(z * 4.0), labels).item(), rel=1e-5)
    assert terms["slerp_ce"].item() == 0.0
    scale = math.exp(model.logit_scale.item())
    total = 0.0
    for direction in (z @ t.T, t @ z.T):  # rows: queries; every same-label column is a positive, weights 1/count
        for i in range(4):
            positives = [j for j in range(4) if labels[j] == labels[i]]
            log_p = torch.log_softmax(scale * direction[i], dim=0)
            total += -sum(log_p[j].item() for j in positives) / len(positives) / 4
    assert terms["contrastive"].item() == pytest.approx(total / 2, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["ce"].item() + terms["contrastive"].item(), rel=1e-5)
    on = build_entrep("entrep-tiny", ["a", "b", "c"], img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                      vision_heads=4, embed_dim=16, context_length=16, text_width=32, text_layers=1, text_heads=4,
                      cls_layers=(1, 2), slerp_prob=1.0)
    assert classify_losses(on, images, labels, None, torch.Generator().manual_seed(0))["slerp_ce"].item() > 0
