"""`endofuse evaluate` and checkpoints: outputs never touch the dataset, damaged inputs are one line."""
import errno
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from endofuse import cli
from endofuse.model import build_model, demo_checkpoint_path, load_checkpoint, save_checkpoint
from endofuse.outputs import WriteError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two pairs whose masks live in masks/ (as many datasets keep them), listed by Test.csv."""
    root = tmp_path_factory.mktemp("ds")
    (root / "imgs").mkdir()
    (root / "masks").mkdir()
    rows = ["wli_path,nbi_path,label_path"]
    for i in range(2):
        image = np.full((40, 48, 3), 60 + 40 * i, np.uint8)
        cv2.imwrite(str(root / "imgs" / f"{i}_1.png"), image)
        cv2.imwrite(str(root / "imgs" / f"{i}_2.png"), image[..., ::-1])
        mask = np.zeros((40, 48), np.uint8)
        mask[10:30, 12:36] = 1  # 0/1 encoded
        cv2.imwrite(str(root / "masks" / f"{i}_1.png"), mask)
        rows.append(f"imgs/{i}_1.png,imgs/{i}_2.png,masks/{i}_1.png")
    (root / "Test.csv").write_text("\n".join(rows) + "\n")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny32.pt", build_model("tiny", img_size=32))


def one_line(capsys, rc):
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar
    err = err[err.find("endofuse"):]
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def evaluate(small_checkpoint):
    def run(data, out, checkpoint=None, *extra):
        return cli.main(["evaluate", "--data", str(data), "--checkpoint", str(checkpoint or small_checkpoint),
                         "--out", str(out), *extra])
    return run


@pytest.mark.parametrize("where", [".", "masks"])
def test_out_over_the_dataset_is_refused_and_the_ground_truth_kept(where, dataset, capsys, evaluate):
    before = snapshot(dataset)
    assert "contains the input" in one_line(capsys, evaluate(dataset, dataset / where))
    assert snapshot(dataset) == before


def test_out_that_is_a_file_or_holds_foreign_files(dataset, tmp_path, capsys, evaluate):
    (tmp_path / "a_file").write_text("keep")
    assert "existing file" in one_line(capsys, evaluate(dataset, tmp_path / "a_file"))
    out = tmp_path / "eval"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "--force" in one_line(capsys, evaluate(dataset, out))
    assert evaluate(dataset, out, None, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine" and len(list((out / "masks").iterdir())) == 2
    (out / "notes.txt").unlink()
    assert evaluate(dataset, out) == 0  # its own earlier output: allowed


def test_an_onnx_file_is_named_as_an_export(dataset, tmp_path, capsys, evaluate):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07")
    err = one_line(capsys, evaluate(dataset, tmp_path / "o", fake))
    assert "is an ONNX export, not a checkpoint" in err and "weights_only" not in err


def test_a_forged_checkpoint_is_one_short_line(dataset, tmp_path, capsys, evaluate, small_checkpoint):
    payload = torch.load(small_checkpoint, weights_only=True)
    key = next(k for k, v in payload["state_dict"].items() if v.ndim == 2)
    payload["state_dict"][key] = torch.zeros(3, 3)
    forged = tmp_path / "forged.pt"
    torch.save(payload, forged)
    err = one_line(capsys, evaluate(dataset, tmp_path / "o", forged))
    assert key in err and "(3, 3) stored" in err and len(err) < 400
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_metrics_write_on_a_full_disk_is_one_line_and_leaves_no_temp(dataset, tmp_path, capsys, monkeypatch,
                                                                     evaluate):
    import endofuse.outputs as outputs

    out = tmp_path / "eval"
    assert evaluate(dataset, out) == 0
    good = (out / "metrics.json").read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    err = one_line(capsys, evaluate(dataset, out))
    assert "metrics.json" in err and "no space left on device" in err
    assert (out / "metrics.json").read_bytes() == good and not list(out.rglob("*.tmp"))


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import endofuse.outputs as outputs

    path = tmp_path / "last.pt"
    shutil.copyfile(demo_checkpoint_path(), path)
    before = path.read_bytes()
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(WriteError, match="last.pt.*no space"):
        save_checkpoint(path, build_model("tiny"))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    load_checkpoint(path)
