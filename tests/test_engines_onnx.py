"""ONNX export, the ONNX Runtime engine, the torch engine and open_engine, against the torch model itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import endofuse.model
from endofuse.errors import EndofuseError
from endofuse.model import save_checkpoint
from endofuse.realtime.engines import Engine, factory, open_engine
from endofuse.realtime.engines.cache import file_sha256
from endofuse.realtime.engines.onnx_export import ONNX_OPSET, export_onnx, missing_nbi_path_for

from conftest import SIZE, random_pair, tiny_test_model, torch_logits


def test_export_writes_named_inputs_opset_and_both_variants(exported):
    fused_path = exported.onnx_path
    fused, wli_only = onnx.load(str(fused_path)), onnx.load(str(missing_nbi_path_for(fused_path)))
    assert missing_nbi_path_for(fused_path) == fused_path.with_name("model.missing-nbi.onnx")
    assert [i.name for i in fused.graph.input] == ["wli", "nbi"]
    assert [i.name for i in wli_only.graph.input] == ["wli"]
    for proto in (fused, wli_only):
        assert [o.name for o in proto.graph.output] == ["logits"]
        assert {op.domain: op.version for op in proto.opset_import}[""] == ONNX_OPSET
        dims = proto.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]


@pytest.mark.parametrize("with_nbi", [True, False])
def test_onnxruntime_engine_matches_torch_model(exported, with_nbi):
    model, path = exported.model, exported.onnx_path
    engine = open_engine(path, backend="onnxruntime")
    wli, nbi = random_pair(batch=3)
    nbi = nbi if with_nbi else None
    expected = torch_logits(model, wli, nbi)
    got = engine.infer(wli, nbi)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (3, 2, SIZE, SIZE)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the fused and missing-NBI paths really differ (else the test above could not tell them apart)
    other = torch_logits(model, wli, None if with_nbi else random_pair(batch=3)[1])
    assert np.abs(other - expected).max() > 1e-3
    # torch tensors in -> torch tensors out
    as_torch = engine.infer(torch.from_numpy(wli), None if nbi is None else torch.from_numpy(nbi))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spinning", [False, True])
def test_spinning_setting_reaches_both_sessions_and_changes_no_result(exported, spinning):
    from endofuse.realtime.engines.ort_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(exported.onnx_path, spinning=spinning)
    for session in (engine.session, engine.missing_nbi_session):
        entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        assert entry == ("1" if spinning else "0")
    wli, nbi = random_pair(batch=1)
    np.testing.assert_allclose(engine.infer(wli, nbi), torch_logits(exported.model, wli, nbi), atol=1e-4, rtol=0)


def test_engine_attributes(exported):
    engine = open_engine(exported.onnx_path, backend="onnxruntime")
    assert isinstance(engine, Engine) and engine.name == "onnxruntime"
    assert engine.input_size == (SIZE, SIZE) and engine.num_classes == 2 and engine.fixed_batch is None
    assert engine.model_label == "tiny (tiny.pt)"
    assert engine.warmup() >= 0


@pytest.mark.parametrize("as_numpy", [True, False])
def test_torch_engine_matches_model(exported, as_numpy):
    model, checkpoint = exported.model, exported.checkpoint
    engine = open_engine(checkpoint, backend="torch", device="cpu")
    assert engine.name == "torch" and engine.model_label == "tiny (tiny.pt)"
    wli, nbi = random_pair(batch=2)
    for second in (nbi, None):
        expected = torch_logits(model, wli, second)
        if as_numpy:
            got = engine.infer(wli, second)
            assert isinstance(got, np.ndarray)
        else:
            got = engine.infer(torch.from_numpy(wli), None if second is None else torch.from_numpy(second))
            assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
            got = got.numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_checkpoint_with_onnxruntime_is_exported_once_into_cache_keyed_by_hash(exported, tmp_path, monkeypatch):
    model, checkpoint, path, cache = exported.model, exported.checkpoint, exported.onnx_path, exported.cache
    assert path.parent.parent == cache / "onnx" and path.parent.name.startswith(file_sha256(checkpoint)[:24])
    monkeypatch.setenv("ENDOFUSE_CACHE", str(cache))

    def no_export(*args, **kwargs):
        raise AssertionError("export attempted")

    monkeypatch.setattr(factory, "export_onnx", no_export)
    again = open_engine(checkpoint, backend="onnxruntime", dynamic_batch=True)
    assert again.path == path
    wli, nbi = random_pair()
    np.testing.assert_allclose(again.infer(wli, nbi), torch_logits(model, wli, nbi), atol=1e-4, rtol=0)
    # other weights -> another hash -> a new export; so does another batch mode
    other = save_checkpoint(tmp_path / "other.pt", tiny_test_model(seed=5))
    with pytest.raises(AssertionError, match="export attempted"):
        open_engine(other, backend="onnxruntime", dynamic_batch=True)
    with pytest.raises(AssertionError, match="export attempted"):
        open_engine(checkpoint, backend="onnxruntime", dynamic_batch=False)


def test_open_engine_none_uses_bundled_demo_weights(exported, monkeypatch):
    checkpoint = exported.checkpoint
    monkeypatch.setattr(endofuse.model, "demo_checkpoint_path", lambda: Path(checkpoint))
    engine = open_engine(None, backend="torch", device="cpu")
    assert engine.model_label == "tiny (demo weights, synthetic data)"
    with pytest.raises(EndofuseError, match="no bundled weights for model 'paper'"):
        open_engine(None, model_name="paper")


# ---- bad input: each error names its cause ----------------------------------------------------

@pytest.fixture(scope="module")
def ort_engine(exported):
    return open_engine(exported.onnx_path, backend="onnxruntime")


@pytest.mark.parametrize("shape, dtype, match", [
    ((1, 3, SIZE + 16, SIZE), np.float32, r"shape \(1, 3, 48, 32\), expected \(B, 3, 32, 32\)"),
    ((1, SIZE, SIZE, 3), np.float32, r"expected \(B, 3, 32, 32\) RGB NCHW"),
    ((3, SIZE, SIZE), np.float32, r"shape \(3, 32, 32\)"),
    ((1, 3, SIZE, SIZE), np.uint8, r"uint8, expected preprocessed float32"),
])
def test_wrong_inputs_are_refused_with_the_cause(ort_engine, shape, dtype, match):
    bad = np.zeros(shape, dtype)
    good = np.zeros((1, 3, SIZE, SIZE), np.float32)
    with pytest.raises(EndofuseError, match=match):
        ort_engine.infer(bad, good)
    with pytest.raises(EndofuseError, match="nbi batch"):
        ort_engine.infer(good, bad)


def test_batch_mismatch_between_wli_and_nbi(ort_engine):
    wli, nbi = random_pair(batch=2)
    with pytest.raises(EndofuseError, match="wli batch has 2 frames but nbi has 1"):
        ort_engine.infer(wli, nbi[:1])


def _copy_with_metadata(src: Path, dst: Path, **changes: str) -> Path:
    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(changes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(dst))
    return dst


def test_model_file_of_another_format_version_is_refused(exported, tmp_path):
    path = _copy_with_metadata(exported.onnx_path, tmp_path / "old.onnx", endofuse_engine_format="0",
                               endofuse_version="0.0.1")
    with pytest.raises(EndofuseError, match=r"old\.onnx has engine format 0 \(endofuse 0\.0\.1\)"):
        open_engine(path, backend="onnxruntime")


def test_missing_nbi_file_of_another_checkpoint_is_refused(exported, tmp_path):
    fused = _copy_with_metadata(exported.onnx_path, tmp_path / "m.onnx")
    _copy_with_metadata(missing_nbi_path_for(exported.onnx_path), missing_nbi_path_for(fused), source_sha256="f00d")
    with pytest.raises(EndofuseError, match=r"m\.missing-nbi\.onnx does not match .*source_sha256"):
        open_engine(fused, backend="onnxruntime")


def test_without_missing_nbi_file_the_nbi_path_still_runs_and_none_says_what_is_missing(exported, tmp_path):
    fused = _copy_with_metadata(exported.onnx_path, tmp_path / "alone.onnx")
    engine = open_engine(fused, backend="onnxruntime")
    wli, nbi = random_pair()
    assert engine.infer(wli, nbi).shape == (1, 2, SIZE, SIZE)
    with pytest.raises(EndofuseError, match=r"alone\.missing-nbi\.onnx is not there"):
        engine.infer(wli, None)


def test_foreign_onnx_file_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["wli"], ["logits"])], "foreign",
        [onnx.helper.make_tensor_value_info("wli", onnx.TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, SIZE, SIZE])])
    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(EndofuseError, match=r"foreign\.onnx was not written by `endofuse export`"):
        open_engine(path, backend="onnxruntime")


def test_corrupt_and_unknown_files_are_refused(exported, tmp_path):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(exported.onnx_path.read_bytes()[:1000])
    with pytest.raises(EndofuseError, match=r"cut\.onnx cannot be loaded by onnxruntime"):
        open_engine(truncated, backend="onnxruntime")
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"x")
    with pytest.raises(EndofuseError, match=r"model\.bin: unknown type '\.bin'"):
        open_engine(weird)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        open_engine(tmp_path / "nope.pt")
    with pytest.raises(EndofuseError, match="torch backend needs a .pt checkpoint"):
        open_engine(exported.onnx_path, backend="torch")
    with pytest.raises(EndofuseError, match="unknown engine backend 'tflite'"):
        open_engine(exported.onnx_path, backend="tflite")


def test_foreign_checkpoint_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "foreign.pt"
    torch.save({"transformer.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"foreign\.pt: not an endofuse checkpoint"):
        open_engine(path, backend="onnxruntime")


def test_fixed_batch_export_refuses_other_batch_sizes(tmp_path):
    model = tiny_test_model()
    lines: list[str] = []
    result = export_onnx(model, tmp_path / "b1.onnx", model_label="t", dynamic_batch=False, missing_nbi=False,
                         log=lines.append)
    assert not result.missing_nbi_path.exists()
    # the parity check ran and printed its number
    assert len(lines) == 1 and "max |onnx - torch|" in lines[0] and 0 <= result.parity["fused"] <= 1e-4
    engine = open_engine(result.path, backend="onnxruntime")
    assert engine.fixed_batch == 1
    wli, nbi = random_pair(batch=2)
    np.testing.assert_allclose(engine.infer(wli[:1], nbi[:1]), torch_logits(model, wli[:1], nbi[:1]), atol=1e-4, rtol=0)
    with pytest.raises(EndofuseError, match="fixed batch of 1; export with --dynamic-batch"):
        engine.infer(wli, nbi)
