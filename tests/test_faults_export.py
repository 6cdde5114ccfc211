"""`endofuse export` never replaces its checkpoint; Triton repositories pin the version they serve."""
import shutil

import pytest

from endofuse import cli
from endofuse.model import demo_checkpoint_path
from endofuse.realtime.engines.tritonserver_repo import check_repository, write_triton_repository
from endofuse.realtime.engines.tritonserver_schema import parse_model_config

from conftest import stand_in_export


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.pt"
    shutil.copyfile(demo_checkpoint_path(), path)
    return path


def one_line(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("fmt, out, message", [
    ("onnx", "w.pt", "same as the input --checkpoint"),
    ("triton-repo", ".", "contains the input --checkpoint"),
    ("triton-repo", "a_file", "is an existing file"),
    ("onnx", "folder", "is a folder"),
])
def test_export_outputs_are_refused_before_any_work(fmt, out, message, weights, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep")
    (tmp_path / "folder").mkdir()
    before = weights.read_bytes()
    rc = cli.main(["export", "--checkpoint", str(weights), "--format", fmt, "--out", str(tmp_path / out)])
    assert message in one_line(capsys, rc)
    assert weights.read_bytes() == before and (tmp_path / "a_file").read_text() == "keep"


def test_triton_repo_over_a_foreign_repository_needs_force(weights, tmp_path, capsys):
    stale = tmp_path / "repo" / "endofuse" / "2" / "model.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"someone else's model")
    rc = cli.main(["export", "--checkpoint", str(weights), "--format", "triton-repo", "--out", str(tmp_path / "repo")])
    err = one_line(capsys, rc)
    assert "--force" in err and "endofuse/2/model.onnx" in err
    assert stale.read_bytes() == b"someone else's model"


def test_the_exported_version_is_pinned_so_a_stale_version_is_never_served(tmp_path):
    root = tmp_path / "repo"
    configs = write_triton_repository(root, stand_in_export(tmp_path))
    for config_path in configs:
        config = parse_model_config(config_path.read_text(), str(config_path))
        assert list(config.version_policy.specific.versions) == [1]
    (root / "endofuse" / "2").mkdir()  # a version left over from another export
    shutil.copyfile(root / "endofuse" / "1" / "model.onnx", root / "endofuse" / "2" / "model.onnx")
    assert check_repository(root) == ["endofuse", "endofuse_missing_nbi"]  # pinned: version 2 is not served
    text = (root / "endofuse" / "config.pbtxt").read_text()
    start = text.index("version_policy")
    end = text.index("}", text.index("}", start) + 1) + 1  # the nested specific { } and the policy's own }
    (root / "endofuse" / "config.pbtxt").write_text(text[:start] + text[end:])  # Triton's default: latest
    with pytest.raises(ValueError, match=r"would serve version\(s\) \[2\]"):
        check_repository(root)


def test_writing_the_same_repository_again_keeps_one_version(tmp_path):
    root = tmp_path / "repo"
    onnx_path = stand_in_export(tmp_path)
    write_triton_repository(root, onnx_path)
    write_triton_repository(root, onnx_path)
    assert sorted(p.name for p in (root / "endofuse").iterdir()) == ["1", "config.pbtxt"]
    assert not list(root.rglob("*.tmp"))


@pytest.mark.slow  # a real ONNX export
def test_onnx_export_on_a_full_disk_is_one_line_and_leaves_no_temp(tmp_path, monkeypatch, capsys):
    import errno
    import os

    import torch

    import endofuse.outputs as outputs
    from endofuse.model import build_model, save_checkpoint

    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / "w.pt", build_model("tiny", img_size=32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"previous export")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    rc = cli.main(["export", "--checkpoint", str(weights), "--format", "onnx", "--out", str(out / "m.onnx")])
    err = one_line(capsys, rc)
    assert "m.onnx" in err and "no space left on device" in err
    assert sorted(p.name for p in out.iterdir()) == ["m.onnx"] and (out / "m.onnx").read_bytes() == b"previous export"
