"""Classification CSVs, synthetic classes, metrics against brute force, gallery index + search round trip."""
import json

import numpy as np
import pytest
import torch

from endofuse.errors import EndofuseError
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import save_classifier
from endofuse.train.classify_data import class_names, load_classify_split
from endofuse.train.classify_metrics import classification_metrics, first_hit_ranks, retrieval_metrics
from endofuse.train.classify_synth import CLASSES, write_classification_dataset

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16,
            context_length=24, text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2)


@pytest.fixture(scope="module")
def cls_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls")
    counts = write_classification_dataset(out, train_scenes=3, test_scenes=3, size=(40, 40), seed=0)
    assert counts == {"cls_train.csv": 6, "cls_test.csv": 6}
    return out


@pytest.fixture(scope="module")
def checkpoint(cls_folder, tmp_path_factory):
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", list(CLASSES), **TINY)
    return save_classifier(tmp_path_factory.mktemp("ckpt") / "c.pt", model)


def test_synthetic_folder_has_every_class_in_both_modalities(cls_folder):
    records = load_classify_split(cls_folder, "train")
    assert sorted(class_names(records)) == sorted(CLASSES)
    assert {r.caption.split()[1] for r in records} == {"WLI", "NBI"}
    assert all(r.image.is_file() and r.image.parent.name == "cls_imgs" for r in records)


def test_bad_rows_are_reported_together(tmp_path, cls_folder):
    good = "cls_imgs/" + sorted(p.name for p in (cls_folder / "cls_imgs").iterdir())[0]
    (tmp_path / "cls_imgs").mkdir()
    (tmp_path / "cls_imgs" / "ok.png").write_bytes((cls_folder / good).read_bytes())
    (tmp_path / "cls_imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "cls_train.csv").write_text(
        "image_path,label,caption\n"
        "cls_imgs/ok.png,normal,\n"            # caption is optional
        "cls_imgs/missing.png,normal,x\n"      # row 2: missing file
        ",small_lesion,x\n"                    # row 3: no path
        "cls_imgs/broken.png,large_lesion,\n"  # row 4: unreadable
        "cls_imgs/ok.png,,x\n",                # row 5: no label
        encoding="utf-8")
    with pytest.raises(EndofuseError) as info:
        load_classify_split(tmp_path, "train")
    message = str(info.value)
    assert "4 bad row(s)" in message
    for row in ("row 2 (line 3): image file missing", "row 3 (line 4): needs image_path and label",
                "row 4 (line 5): image unreadable", "row 5 (line 6): needs image_path and label"):
        assert row in message


def test_unknown_label_and_header_errors(tmp_path, cls_folder):
    src = (cls_folder / "cls_imgs").iterdir().__next__()
    (tmp_path / "x.png").write_bytes(src.read_bytes())
    (tmp_path / "cls_test.csv").write_text("label,image_path\ntumour,x.png\n", encoding="utf-8")  # columns by name
    with pytest.raises(EndofuseError, match=r"row 1 \(line 2\): label 'tumour' is not one of the trained classes"):
        load_classify_split(tmp_path, "test", classes=["normal", "small_lesion"])
    assert load_classify_split(tmp_path, "test")[0].label == "tumour"
    (tmp_path / "cls_test.csv").write_text("path,class\nx.png,a\n", encoding="utf-8")
    with pytest.raises(EndofuseError, match="lacks image_path, label"):
        load_classify_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="no cls_train.csv"):
        load_classify_split(tmp_path, "train")


# ---- metrics vs brute force ----
def brute_ranks(scores, q_labels, g_labels, exclude_self):
    ranks = []
    for q in range(len(scores)):
        items = [(scores[q][g], -g, g) for g in range(len(g_labels)) if not (exclude_self and g == q)]
        items.sort(reverse=True)  # higher score first, ties: lower gallery index first
        rank = 0
        for position, (_, _, g) in enumerate(items, start=1):
            if g_labels[g] == q_labels[q]:
                rank = position
                break
        ranks.append(rank)
    return ranks


@pytest.mark.parametrize("exclude_self", [False, True])
def test_retrieval_metrics_match_brute_force(exclude_self):
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(30, 30)).astype(float)  # many ties on purpose
    labels = rng.integers(0, 4, size=30)
    labels[7] = 9  # a class with one member: no hit once itself is left out
    ranks = first_hit_ranks(scores, labels, labels, exclude_self=exclude_self)
    expected = brute_ranks(scores.tolist(), labels.tolist(), labels.tolist(), exclude_self)
    assert ranks.tolist() == expected
    m = retrieval_metrics(ranks)
    assert m["recall@1"] == pytest.approx(sum(1 for r in expected if r == 1) / 30)
    assert m["recall@5"] == pytest.approx(sum(1 for r in expected if 1 <= r <= 5) / 30)
    assert m["mrr"] == pytest.approx(sum(1 / r for r in expected if r) / 30)


def test_classification_metrics_hand_computed():
    true = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(true, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P 2/2 R 2/3 -> F1 0.8; b: P 1/2 R 1/2 -> 0.5; c: P 1/2 R 1/1 -> 2/3
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["precision"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


# ---- gallery ----
def test_index_and_search_round_trip(cls_folder, checkpoint, tmp_path, capsys):
    from endofuse.cli import main
    from endofuse.train.search_command import search

    gallery = tmp_path / "gallery"
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(cls_folder), "--split", "train",
                 "--out", str(gallery)]) == 0
    assert json.loads((gallery / "gallery.json").read_text())["count"] == 6
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(cls_folder), "--out", str(gallery)]) == 0
    assert "indexed 6 new image(s)" in capsys.readouterr().out  # train rows already there: only test added
    from endofuse.train.gallery import Gallery

    opened = Gallery.open(gallery)
    items = opened.items
    assert len(items) == 12 and opened.meta["generation"] == 2
    # the previous generation's data files are gone, the current ones are all that is left
    assert sorted(p.name for p in gallery.iterdir() if not p.name.startswith(".")) == sorted(
        ["gallery.json", *opened.meta["files"].values()])
    from endofuse.model.entrep_weights import load_classifier

    model = load_classifier(checkpoint)
    for i, item in enumerate(items):
        results = search(gallery, image=item["image_path"], k=3, model=None if i == 0 else model)
        assert results[0]["image_path"] == item["image_path"] and results[0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    capsys.readouterr()
    assert main(["search", "--gallery", str(gallery), "--text", "an NBI endoscopy frame showing a large lesion",
                 "-k", "4", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)
    assert len(ranked) == 4 and set(ranked[0]) == {"image_path", "label", "score"}
    # brute force: cosine of the text embedding with every stored embedding
    from endofuse.train.classify import embed_texts

    text = embed_texts(model, ["an NBI endoscopy frame showing a large lesion"])[0]
    emb = np.load(gallery / opened.meta["files"]["embeddings"])
    best = np.argsort(-(emb @ text), kind="stable")[:4]
    assert [items[i]["image_path"] for i in best] == [r["image_path"] for r in ranked]


def test_gallery_refuses_another_checkpoint(cls_folder, checkpoint, tmp_path, capsys):
    from endofuse.cli import main

    gallery = tmp_path / "g"
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(cls_folder), "--split", "test",
                 "--out", str(gallery)]) == 0
    torch.manual_seed(1)
    other = save_classifier(tmp_path / "other.pt", build_entrep("entrep-tiny", list(CLASSES), **TINY))
    assert main(["index", "--checkpoint", str(other), "--data", str(cls_folder), "--out", str(gallery)]) == 1
    assert "built with another checkpoint" in capsys.readouterr().err
