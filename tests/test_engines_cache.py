"""The engine cache: a damaged or unfinished entry is rebuilt, not served; a cache that cannot be written and an
unusable `--calibration` folder are one line each, before any export work."""
import json
import os
import shutil
from pathlib import Path

import pytest

from endofuse import cli
from endofuse.errors import EndofuseError
from endofuse.realtime.engines import factory
from endofuse.realtime.engines.cache import STAMP_NAME, build_entry, entry_complete, file_sha256
from endofuse.realtime.engines.onnx_export import missing_nbi_path_for


@pytest.fixture
def copied_exports(exported, monkeypatch, tmp_path):
    """A fresh cache whose export step copies the session's (parity-checked) export; returns the call count."""
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    calls = []

    def copy_export(model, out_path, **_):
        calls.append(out_path)
        shutil.copyfile(exported.onnx_path, out_path)
        shutil.copyfile(missing_nbi_path_for(exported.onnx_path), missing_nbi_path_for(out_path))

    monkeypatch.setattr(factory, "export_onnx", copy_export)
    return calls


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "no stamp (export cut short)",
                                    "variant missing"])
def test_a_damaged_cache_entry_is_rebuilt_and_the_engine_opens(damage, exported, copied_exports):
    path = factory.cached_onnx(exported.checkpoint, dynamic_batch=True)
    stamp = json.loads((path.parent / STAMP_NAME).read_text())["files"]
    assert stamp["model.onnx"] == {"bytes": path.stat().st_size, "sha256": file_sha256(exported.onnx_path)}
    assert len(copied_exports) == 1 and factory.cached_onnx(exported.checkpoint, dynamic_batch=True) == path
    assert len(copied_exports) == 1  # a complete entry is served as it is
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "one byte changed":
        path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "variant missing":
        missing_nbi_path_for(path).unlink()
    else:
        (path.parent / STAMP_NAME).unlink()
    assert not entry_complete(path.parent)
    engine = factory.open_engine(exported.checkpoint, backend="onnxruntime", dynamic_batch=True)
    assert len(copied_exports) == 2 and engine.path == path
    assert file_sha256(path) == file_sha256(exported.onnx_path) and entry_complete(path.parent)


def test_a_build_that_fails_leaves_no_stamp(tmp_path):
    folder = tmp_path / "entry"
    folder.mkdir()

    def half_written():
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError("no space left on device")

    with pytest.raises(OSError):
        build_entry(folder, half_written)
    assert not entry_complete(folder)
    build_entry(folder, lambda: (folder / "model.onnx").write_bytes(b"whole"))
    assert (folder / "model.onnx").read_bytes() == b"whole" and entry_complete(folder)
    (folder / "stray.txt").write_text("x")  # a file the stamp does not list: not the entry that was stamped
    assert not entry_complete(folder)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


RUN = ["run", "--wli", "synthetic", "--frames", "2", "--engine", "onnxruntime"]


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    assert cli.main(RUN) == 1
    err = one_line_error(capsys)
    assert f"ENDOFUSE_CACHE '{tmp_path / 'cache'}'" in err and "is a file" in err


@pytest.mark.parametrize("where", ["sysfs", "read-only folder"])
def test_a_cache_that_cannot_be_written_is_one_line(where, tmp_path, monkeypatch, capsys):
    if where == "sysfs":  # the kernel refuses new folders there, even to root
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no sysfs")
        cache = Path("/sys/kernel/endofuse-cache")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        cache = tmp_path / "ro"
        cache.mkdir(mode=0o555)
    monkeypatch.setenv("ENDOFUSE_CACHE", str(cache))
    assert cli.main(RUN) == 1
    err = one_line_error(capsys)
    assert f"ENDOFUSE_CACHE '{cache}'" in err and "writable folder" in err


def write_csv(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Training.csv").write_text("\n".join(["wli_path,nbi_path,label_path", *rows]) + "\n")
    return folder


@pytest.mark.parametrize("case, message", [
    ("empty folder", "no Training.csv"),
    ("no folder", "no such folder"),
    ("header only", "no data rows"),
    ("missing images", "cannot read image"),
])
def test_an_unusable_calibration_folder_is_refused_before_the_export(case, message, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(factory, "load_model_and_label", lambda *a: pytest.fail("the export started"))
    calibration = tmp_path / "calib"
    if case == "empty folder":
        calibration.mkdir()
    elif case == "header only":
        write_csv(calibration, [])
    elif case == "missing images":
        write_csv(calibration, ["imgs/w.png,imgs/n.png,imgs/m.png"])
    for fmt in ("onnx-int8", "openvino-int8"):
        assert cli.main(["export", "--format", fmt, "--calibration", str(calibration), "--out",
                         str(tmp_path / "m.onnx" if fmt == "onnx-int8" else tmp_path / "m.xml")]) == 1
        err = one_line_error(capsys)
        assert message in err and "calib" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if case == "no folder" else ["calib"])


def test_a_good_calibration_folder_passes_the_check(sample_data_dir):
    from endofuse.realtime.engines.calibration import check_calibration_folder

    check_calibration_folder(sample_data_dir)  # the five real pairs
    with pytest.raises(EndofuseError, match="not a folder"):
        check_calibration_folder(next(sample_data_dir.glob("*.csv")))
