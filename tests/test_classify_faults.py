"""The output-safety rules (docs/faults.md) for train/evaluate --task classify, index and search.

Inputs are never overwritten, foreign folders are refused, failed writes are one
line naming the file, exit codes are true, and an interrupted gallery append
leaves the previous gallery intact.
"""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from endofuse.cli import main
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import read_classifier, save_classifier
from endofuse.train.classify import ClassifyOptions, train_classifier
from endofuse.train.classify_synth import CLASSES, write_classification_dataset
from endofuse.train.gallery import Gallery, locked

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16,
            context_length=24, text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_faults")
    write_classification_dataset(out, train_scenes=3, test_scenes=2, size=(40, 40), seed=0)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_classifier(tmp_path_factory.mktemp("ckpt") / "c.pt", build_entrep("entrep-tiny", list(CLASSES), **TINY))


@pytest.fixture(scope="module")
def train_gallery(data, checkpoint, tmp_path_factory):
    """A gallery of the train split only (6 rows); tests append the test split to copies of it."""
    out = tmp_path_factory.mktemp("g") / "gallery"
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(data), "--split", "train",
                 "--out", str(out)]) == 0
    return out


def one_line(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".endofuse-outputs.json"}


def fail_nth_replace(monkeypatch, n, error):
    """os.replace raises `error` on its n-th call (the rename that finishes an atomic write)."""
    stock, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == n:
            raise error
        return stock(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


# ---- index: an append is all or nothing ----
@pytest.mark.parametrize("n", [1, 2, 3, 4])  # embeddings, items, index, gallery.json (the commit)
def test_a_full_disk_at_any_write_of_an_append_keeps_the_previous_gallery(n, data, checkpoint, train_gallery,
                                                                          tmp_path, capsys, monkeypatch):
    gallery = shutil.copytree(train_gallery, tmp_path / "g")
    before = snapshot(gallery)
    calls = fail_nth_replace(monkeypatch, n, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    err = one_line(capsys, main(["index", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(gallery)]))
    monkeypatch.undo()
    assert "no space left on device" in err and os.path.basename(calls[n - 1]) in err
    after = snapshot(gallery)
    kept = Gallery.open(gallery)
    assert len(kept.items) == 6 and {i["split"] for i in kept.items} == {"train"}
    for name in ("gallery.json", *kept.meta["files"].values()):
        assert after[name] == before[name]  # the committed generation is byte for byte the old one
    assert not [p for p in gallery.iterdir() if p.name.endswith(".tmp")]
    # the next append succeeds and removes what the failed one left behind
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(gallery)]) == 0
    grown = Gallery.open(gallery)
    assert len(grown.items) == 10
    assert sorted(p.name for p in gallery.iterdir() if not p.name.startswith(".")) == sorted(
        ["gallery.json", *grown.meta["files"].values()])


def test_a_crash_mid_append_leaves_a_gallery_that_searches_as_before(data, checkpoint, train_gallery, tmp_path,
                                                                     monkeypatch):
    gallery = shutil.copytree(train_gallery, tmp_path / "g")
    query = Gallery.open(gallery).embeddings[:2]
    expected = Gallery.open(gallery).search(query, 3)
    fail_nth_replace(monkeypatch, 3, KeyboardInterrupt())  # the process dies between two data files
    assert main(["index", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(gallery)]) == 130
    monkeypatch.undo()
    assert Gallery.open(gallery).search(query, 3) == expected
    brute = np.argsort(-(Gallery.open(gallery).embeddings @ query.T).T, axis=1, kind="stable")[:, :3]
    items = Gallery.open(gallery).items
    assert [[r["image_path"] for r in row] for row in expected] == [[items[j]["image_path"] for j in row]
                                                                    for row in brute]


def test_index_refusals_are_one_line(data, checkpoint, train_gallery, tmp_path, capsys):
    base = ["index", "--checkpoint", str(checkpoint), "--data", str(data)]
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "is an existing file" in one_line(capsys, main(base + ["--out", str(afile)]))
    assert "same as the input --data" in one_line(capsys, main(base + ["--out", str(data)]))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert "notes.txt" in one_line(capsys, main(base + ["--out", str(foreign)]))
    assert main(base + ["--out", str(foreign), "--force"]) == 0
    assert (foreign / "notes.txt").read_text() == "keep me" and len(Gallery.open(foreign).items) == 10
    with locked(train_gallery):
        assert "another endofuse index" in one_line(capsys, main(base + ["--out", str(train_gallery)]))
    damaged = shutil.copytree(train_gallery, tmp_path / "damaged")
    (damaged / "gallery.json").write_text("{not json")
    assert "gallery.json" in one_line(capsys, main(base + ["--out", str(damaged)]))
    assert "gallery.json" in one_line(capsys, main(["search", "--gallery", str(damaged), "--text", "a lesion"]))


def test_search_mistakes_are_one_line(train_gallery, tmp_path, capsys):
    gallery = shutil.copytree(train_gallery, tmp_path / "g")
    search = ["search", "--gallery", str(gallery)]
    assert "not a gallery" in one_line(capsys, main(["search", "--gallery", str(tmp_path), "--text", "x"]))
    assert "-k must be >= 1" in one_line(capsys, main(search + ["--text", "x", "-k", "0"]))
    assert "file not found" in one_line(capsys, main(search + ["--image", str(tmp_path / "nope.png")]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert "bad.png" in one_line(capsys, main(search + ["--image", str(bad)]))
    meta = json.loads((gallery / "gallery.json").read_text())
    (gallery / meta["files"]["index"]).write_bytes(b"\0" * 64)
    assert meta["files"]["index"] in one_line(capsys, main(search + ["--text", "a lesion"]))
    (gallery / meta["files"]["items"]).unlink()
    assert meta["files"]["items"] in one_line(capsys, main(search + ["--text", "a lesion"]))


# ---- evaluate --task classify ----
def test_evaluate_never_writes_among_its_inputs_and_reports_a_full_disk(data, checkpoint, tmp_path, capsys,
                                                                        monkeypatch):
    base = ["evaluate", "--task", "classify", "--data", str(data), "--checkpoint", str(checkpoint)]
    assert "contains the input" in one_line(capsys, main(base + ["--out", str(data.parent)]))
    assert "_wli.png" in one_line(capsys, main(base + ["--out", str(data / "cls_imgs")]))  # holds the images
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "a.txt").write_text("keep")
    assert "a.txt" in one_line(capsys, main(base + ["--out", str(foreign)]))
    out = tmp_path / "eval"
    assert main(base + ["--out", str(out)]) == 0
    good = (out / "metrics.json").read_bytes()
    calls = fail_nth_replace(monkeypatch, 1, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    err = one_line(capsys, main(base + ["--out", str(out)]))  # a second run into its own folder is allowed
    assert "metrics.json" in err and "no space left" in err and os.path.basename(calls[0]) == "metrics.json"
    monkeypatch.undo()
    assert (out / "metrics.json").read_bytes() == good and not list(out.glob(".*.tmp"))


# ---- train --task classify ----
def options(data, out, **kw):
    return ClassifyOptions(data=data, out=out, epochs=kw.pop("epochs", 1), batch_size=kw.pop("batch_size", 4),
                           progress=False, overrides=TINY, **kw)


def test_train_run_folder_rules(data, tmp_path, capsys, monkeypatch):
    base = ["train", "--task", "classify", "--data", str(data), "--epochs", "1"]
    afile = tmp_path / "f"
    afile.write_text("x")
    assert "existing file" in one_line(capsys, main(base + ["--out", str(afile)]))
    assert "contains the input --data" in one_line(capsys, main(base + ["--out", str(data.parent)]))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep")
    assert "keep.txt" in one_line(capsys, main(base + ["--out", str(foreign)]))

    run = tmp_path / "run"
    assert train_classifier(options(data, run)) == 0
    manifest = json.loads((run / ".endofuse-outputs.json").read_text())["files"]
    assert {"last.pt", "best.pt", "log.csv", "config.json"} <= set(manifest)
    monkeypatch.setattr("sys.argv", ["endofuse"])
    changed = options(data, run, epochs=2, resume=True, lr=5e-4)
    with pytest.raises(Exception, match="--lr"):
        train_classifier(changed)
    assert read_classifier(run / "last.pt")["extra"]["epoch"] == 1  # refused before any work

    def full_disk(payload, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    from endofuse.outputs import WriteError

    fresh = tmp_path / "fresh"
    with pytest.raises(WriteError, match="last.pt.*no space left on device"):
        train_classifier(options(data, fresh))
    assert not (fresh / "last.pt").exists() and not list(fresh.glob(".*.tmp"))


SIGNAL_AT_STEP_TWO = """
import os, sys, torch
from pathlib import Path
from endofuse.train import classify
torch.set_num_threads(1)
stock, steps = classify.classify_losses, []

def losses(*args, **kwargs):
    steps.append(1)
    if len(steps) == 2:
        os.kill(os.getpid(), int(sys.argv[3]))
    return stock(*args, **kwargs)

classify.classify_losses = losses
tiny = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16,
            context_length=24, text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2)
sys.exit(classify.train_classifier(classify.ClassifyOptions(data=Path(sys.argv[1]), out=Path(sys.argv[2]),
         epochs=1, batch_size=2, progress=False, overrides=tiny)))
"""


@pytest.mark.slow
def test_sigterm_is_exit_143_and_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIGNAL_AT_STEP_TWO, str(data), str(run), str(int(signal.SIGTERM))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    extra = read_classifier(run / "last.pt")["extra"]
    assert extra["epoch"] == 0 and extra["batch_in_epoch"] == 2  # the step in flight finished first
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the child: the same float reductions
    try:
        assert train_classifier(options(data, run, resume=True, batch_size=2)) == 0
        assert train_classifier(options(data, tmp_path / "straight", batch_size=2)) == 0
    finally:
        torch.set_num_threads(previous)
    resumed = read_classifier(run / "last.pt")
    straight = read_classifier(tmp_path / "straight" / "last.pt")
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for a, b in zip(resumed["extra"]["history"], straight["extra"]["history"], strict=True):
        assert {k: v for k, v in a.items() if k not in ("seconds", "images_per_s")} == {
            k: v for k, v in b.items() if k not in ("seconds", "images_per_s")}


# ---- synth --classes ----
def test_synth_classes_checks_its_counts_before_writing_and_reports_a_full_disk(tmp_path, capsys, monkeypatch):
    out = tmp_path / "syn"
    assert "--classes needs --pairs >= 3" in one_line(capsys, main(["synth", str(out), "--pairs", "2",
                                                                    "--test-pairs", "1", "--classes"]))
    written = [p.name for p in out.rglob("*") if p.name != ".endofuse-outputs.json"] if out.exists() else []
    assert written == []  # nothing written, not even the segmentation pairs
    calls = fail_nth_replace(monkeypatch, 20, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    rc = main(["synth", str(out), "--pairs", "3", "--test-pairs", "1", "--size", "40x40", "--classes"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.splitlines()[-1]  # the last line, after the progress bar's
    assert rc == 1 and err.startswith("endofuse synth: error: cannot write"), err
    assert "no space left on device" in err and os.path.basename(calls[19]) in err


def test_a_reader_racing_an_append_reads_the_new_generation(data, checkpoint, train_gallery, tmp_path, monkeypatch):
    gallery = shutil.copytree(train_gallery, tmp_path / "g")
    stock, state = np.load, {"appended": False}

    def load_after_an_append(path, *args, **kwargs):  # the append commits between gallery.json and the data
        if not state["appended"]:
            state["appended"] = True
            assert main(["index", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(gallery)]) == 0
        return stock(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load_after_an_append)
    opened = Gallery.open(gallery)
    assert len(opened.items) == 10 and opened.meta["generation"] == 2
