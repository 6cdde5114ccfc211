"""endofuse.outputs: the shared rules every command's outputs follow (checked against plain filesystem facts)."""
import errno
import json
import os

import pytest

from endofuse import cli
from endofuse.errors import EndofuseError
from endofuse.outputs import (
    MANIFEST,
    OutputFolder,
    WriteError,
    atomic_write_text,
    dumps_json,
    finite_or_none,
    refuse_overlap,
)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clip.mp4").write_bytes(b"video")
    os.link(tmp_path / "data" / "clip.mp4", tmp_path / "hardlink.mp4")
    (tmp_path / "link_dir").symlink_to(tmp_path / "data")
    return tmp_path


@pytest.mark.parametrize("out, kind, message", [
    ("data/clip.mp4", "file", "is the same as the input"),
    ("hardlink.mp4", "file", "is the same as the input"),  # another name for the same inode
    ("link_dir/clip.mp4", "file", "is the same as the input"),  # through a symlinked folder
    ("data/../data/clip.mp4", "file", "is the same as the input"),
    (".", "dir", "contains the input"),
    ("link_dir", "dir", "contains the input"),  # a symlink to the folder holding the input
])
def test_outputs_that_resolve_to_inputs_are_refused(out, kind, message, tree):
    with pytest.raises(EndofuseError, match=message):
        refuse_overlap({"--out": tree / out}, {"--in": tree / "data" / "clip.mp4"},
                       output_dirs=["--out"] if kind == "dir" else [])


def test_an_output_beside_but_not_inside_an_input_folder_is_fine(tree):
    refuse_overlap({"--out": tree / "result.mp4", "--report": tree / "r.json"}, {"--in": tree / "data"},
                   input_dirs=["--in"])
    with pytest.raises(EndofuseError, match="inside the input folder"):
        refuse_overlap({"--out": tree / "link_dir" / "new.mp4"}, {"--in": tree / "data"}, input_dirs=["--in"])


def test_owned_folder_records_what_it_wrote_and_refuses_foreign_files(tmp_path):
    folder = OutputFolder(tmp_path / "out", "test --out").prepare()
    (tmp_path / "out" / "sub").mkdir()
    (tmp_path / "out" / "sub" / "a.png").write_bytes(b"a")
    folder.commit()
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["files"] == ["sub/a.png"]
    OutputFolder(tmp_path / "out", "test --out").prepare()  # only its own files: allowed
    (tmp_path / "out" / "user.txt").write_text("x")
    with pytest.raises(EndofuseError, match="user.txt.*--force"):
        OutputFolder(tmp_path / "out", "test --out").prepare()
    forced = OutputFolder(tmp_path / "out", "test --out", force=True).prepare()
    (tmp_path / "out" / "b.png").write_bytes(b"b")
    forced.commit()
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["files"] == ["b.png", "sub/a.png"]  # not user.txt


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch):
    import endofuse.outputs as outputs

    target = tmp_path / "r.json"
    target.write_text("old")
    monkeypatch.setattr(outputs.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "x")))
    with pytest.raises(WriteError, match=r"r\.json.*no space left on device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_strict_json():
    assert json.loads(dumps_json(finite_or_none({"a": float("nan"), "b": [float("inf"), 1.5]}))) == {
        "a": None, "b": [None, 1.5]}
    with pytest.raises(ValueError):
        dumps_json({"a": float("nan")})  # a NaN that reaches the writer is a bug, not a value


def test_bench_and_convert_never_overwrite_their_inputs(tmp_path, capsys):
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"video")
    rc = cli.main(["bench", "--source", str(source), "--json", str(source)])
    err = capsys.readouterr().err
    assert rc == 1 and "same as the input --source" in err and source.read_bytes() == b"video"
    reference = tmp_path / "ref.pth"
    reference.write_bytes(b"weights")
    rc = cli.main(["convert-reference", str(reference), str(reference)])
    err = capsys.readouterr().err
    assert rc == 1 and "same as the input IN.pth" in err and reference.read_bytes() == b"weights"
