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


# ---- issue 25: duplicates, bound gallery files, listed-image folders, no leftovers on refusal ----
def copy_data(data, tmp_path):
    return shutil.copytree(data, tmp_path / "data")


def test_an_image_listed_twice_is_refused_by_evaluate_index_and_train(data, checkpoint, tmp_path, capsys):
    copy = copy_data(data, tmp_path)
    lines = (copy / "cls_test.csv").read_text().splitlines()
    first = lines[1].split(",")
    # the same file again, once verbatim and once through another spelling of its path
    lines += [lines[1], ",".join(["./" + first[0].replace("/", "//"), *first[1:]])]
    (copy / "cls_test.csv").write_text("\n".join(lines) + "\n")
    commands = {"evaluate": ["evaluate", "--task", "classify", "--checkpoint", str(checkpoint)],
                "index": ["index", "--checkpoint", str(checkpoint)],
                "train": ["train", "--task", "classify", "--epochs", "1", "--no-progress"]}
    for name, args in commands.items():
        out = tmp_path / f"out-{name}"
        assert main(args + ["--data", str(copy), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert "2 bad row(s)" in err, err
        assert "cls_test.csv row 5 (line 6): the same image as row 1" in err
        assert "cls_test.csv row 6 (line 7): the same image as row 1" in err
        assert not out.exists()  # refused before the folder was made


def swapped(gallery, kind, source):
    """`gallery`'s data file of `kind` replaced by `source`'s (same rows, same width)."""
    mine, theirs = (json.loads((g / "gallery.json").read_text())["files"][kind] for g in (gallery, source))
    shutil.copyfile(source / theirs, gallery / mine)
    return mine


@pytest.mark.parametrize("kind", ["index", "embeddings", "items"])
def test_a_data_file_swapped_in_from_another_gallery_is_one_line(kind, data, train_gallery, tmp_path, capsys):
    torch.manual_seed(1)  # another checkpoint of the same shape: same rows, same width, other vectors
    other_ckpt = save_classifier(tmp_path / "other.pt", build_entrep("entrep-tiny", list(CLASSES), **TINY))
    other = tmp_path / "other"
    assert main(["index", "--checkpoint", str(other_ckpt), "--data", str(data), "--split", "train",
                 "--out", str(other)]) == 0
    other_files = Gallery.open(other).meta["files"]
    if kind == "items":  # a hand edit: the same rows with one label changed
        items = json.loads((train_gallery / Gallery.open(train_gallery).meta["files"]["items"]).read_text())
        items[0]["label"] = "large_lesion" if items[0]["label"] != "large_lesion" else "normal"
        (other / other_files["items"]).write_text(json.dumps(items))
    gallery = shutil.copytree(train_gallery, tmp_path / "g")
    reference = Gallery.open(gallery)
    assert reference.embeddings.shape == np.load(other / other_files["embeddings"]).shape
    name = swapped(gallery, kind, other)
    err = one_line(capsys, main(["search", "--gallery", str(gallery), "--text", "a lesion"]))
    assert name in err and "SHA-256" in err
    err = one_line(capsys, main(["index", "--checkpoint", str(reference.meta["checkpoint"]), "--data", str(data),
                                 "--out", str(gallery)]))
    assert name in err


def test_force_never_writes_into_the_folder_of_the_listed_images(data, checkpoint, tmp_path, capsys):
    images = data / "cls_imgs"
    before = sorted(p.name for p in images.iterdir())
    for args in (["index", "--checkpoint", str(checkpoint)], ["train", "--task", "classify", "--epochs", "1"]):
        err = one_line(capsys, main(args + ["--data", str(data), "--out", str(images), "--force"]))
        assert "contains the input" in err and ("_wli.png" in err or "_nbi.png" in err), err
    assert sorted(p.name for p in images.iterdir()) == before


def rewrite_csv(path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def test_a_refused_train_leaves_no_out_folder(data, tmp_path, capsys):
    import argparse

    cases = {}
    cases["unknown test label"] = copy_data(data, tmp_path / "a")
    rewrite_csv(cases["unknown test label"] / "cls_test.csv",
                lambda lines: [lines[0], lines[1].replace(",normal,", ",polyp,"), *lines[2:]])
    cases["missing image"] = copy_data(data, tmp_path / "b")
    next((cases["missing image"] / "cls_imgs").glob("s0_00000_wli.png")).unlink()
    cases["one class"] = copy_data(data, tmp_path / "c")
    rewrite_csv(cases["one class"] / "cls_train.csv", lambda lines: [lines[0], *[ln for ln in lines[1:]
                                                                                 if ",normal," in ln]])
    not_a_checkpoint = tmp_path / "namespace.pt"
    torch.save({"model": argparse.Namespace(a=1)}, not_a_checkpoint)  # a pickle torch will not load weights-only
    expected = {"unknown test label": "'polyp' is not one of the trained classes",
                "missing image": "image file missing", "one class": "only 1 distinct label",
                "bad --pretrained": "never unpickled"}
    for case, message in expected.items():
        folder = cases.get(case, data)
        out = tmp_path / "runs" / case.replace(" ", "_")
        extra = ["--pretrained", str(not_a_checkpoint)] if case == "bad --pretrained" else []
        assert main(["train", "--task", "classify", "--data", str(folder), "--epochs", "1", "--out", str(out),
                     *extra]) == 1
        err = capsys.readouterr().err
        assert message in err, (case, err)
        assert not out.exists() and not (tmp_path / "runs").exists(), case  # not even the parent folder
    # the torch.load advice to unpickle anyway is not repeated: one line
    assert main(["train", "--task", "classify", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--pretrained", str(not_a_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "weights_only=False" not in err, err


def test_other_refused_commands_leave_no_out_folder(data, tmp_path, capsys):
    """The same for the segmentation commands that fill a folder (refused after the folder was prepared)."""
    from conftest import synth_dataset

    seg = synth_dataset(tmp_path / "seg", seed=0, size="32x32", pairs=2, test_pairs=1)
    capsys.readouterr()
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    runs = [["evaluate", "--data", str(seg), "--checkpoint", str(not_a_checkpoint)],
            ["evaluate", "--task", "classify", "--data", str(data), "--checkpoint", str(not_a_checkpoint)],
            ["train", "--data", str(tmp_path / "nothing-here"), "--epochs", "1"],
            ["export", "--checkpoint", str(not_a_checkpoint), "--format", "triton-repo"],
            ["synth", "--pairs", "2", "--test-pairs", "1", "--classes"]]
    for i, args in enumerate(runs):
        out = tmp_path / "new" / f"out{i}"
        out_args = [str(out)] if args[0] == "synth" else ["--out", str(out)]
        assert main(args + out_args) == 1
        assert "Traceback" not in capsys.readouterr().err
        assert not (tmp_path / "new").exists(), args
    existing = tmp_path / "mine"  # a folder the user made stays, and gets no manifest
    existing.mkdir()
    assert main(runs[0] + ["--out", str(existing)]) == 1
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_output_folder_made_by_a_failed_command_is_removed(tmp_path):
    from endofuse.outputs import MANIFEST, OutputFolder, remove_unused_folders_on_error

    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), remove_unused_folders_on_error():
        OutputFolder(out, "test --out").prepare()
        (out / "empty-sub").mkdir()
        raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()
    folder = OutputFolder(out, "test --out").prepare()
    folder.commit()  # nothing written: no manifest, no folder
    assert not (tmp_path / "a").exists()
    folder = OutputFolder(out, "test --out").prepare()
    (out / "result.txt").write_text("x")
    with pytest.raises(RuntimeError), remove_unused_folders_on_error():
        raise RuntimeError("failed after writing")
    folder.commit()
    assert json.loads((out / MANIFEST).read_text())["files"] == ["result.txt"]


def test_reindexing_replaces_the_embedding_of_an_image_that_changed(data, checkpoint, tmp_path, capsys):
    import torch.nn.functional as F

    from endofuse.model.entrep_weights import load_classifier
    from endofuse.train.classify_data import image_tensor

    copy = copy_data(data, tmp_path)
    gallery = tmp_path / "g"
    base = ["index", "--checkpoint", str(checkpoint), "--data", str(copy), "--split", "train", "--out", str(gallery)]
    assert main(base) == 0
    changed = copy / "cls_imgs" / "s0_00000_wli.png"
    shutil.copyfile(copy / "cls_imgs" / "s0_00002_nbi.png", changed)  # new content at the same path
    assert main(base) == 0
    assert "updated 1 changed image(s)" in capsys.readouterr().out
    opened = Gallery.open(gallery)
    assert len(opened.items) == 6
    row = [i["image_path"] for i in opened.items].index(str(changed.resolve()))
    model = load_classifier(checkpoint)
    with torch.no_grad():
        expected = F.normalize(model.encode_image(image_tensor(changed, model.img_size)), dim=-1)[0].numpy()
    np.testing.assert_allclose(opened.embeddings[row], expected, atol=1e-5)
    top = opened.search(expected[None], 1)[0][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-5)
    # a relabelled row (same file) is updated too, not kept stale
    rewrite_csv(copy / "cls_train.csv", lambda lines: [lines[0], lines[1].replace(",normal,", ",small_lesion,"),
                                                       *lines[2:]])
    assert main(base) == 0
    relabelled = Gallery.open(gallery)
    assert len(relabelled.items) == 6 and relabelled.items[row]["label"] == "small_lesion"


def test_a_second_index_racing_into_a_new_folder_is_told_another_index_is_writing(data, checkpoint, tmp_path,
                                                                                  capsys):
    new = tmp_path / "new-gallery"
    new.mkdir()
    base = ["index", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(new)]
    with locked(new):  # the first index made the folder and holds its lock, nothing else written yet
        err = one_line(capsys, main(base))
    assert "another endofuse index is writing" in err
    assert main(base) == 0 and len(Gallery.open(new).items) == 10  # and then it can
