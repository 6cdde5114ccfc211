"""The Triton Inference Server repository: configs parsed against Triton's schema and checked against the graphs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from endofuse.errors import EndofuseError
from endofuse.realtime.engines.tritonserver_repo import TritonSettings, check_repository, write_triton_repository
from endofuse.realtime.engines.tritonserver_schema import parse_model_config

from conftest import stand_in_export

SIZE = 16


@pytest.fixture
def repository(tmp_path):
    settings = TritonSettings(max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(4, 8))
    configs = write_triton_repository(tmp_path / "repo", stand_in_export(tmp_path, size=SIZE), settings=settings)
    return tmp_path / "repo", configs


def test_repository_layout_and_config_contents(repository):
    root, configs = repository
    assert [c.relative_to(root).as_posix() for c in configs] == ["endofuse/config.pbtxt",
                                                                  "endofuse_missing_nbi/config.pbtxt"]
    fused = parse_model_config((root / "endofuse" / "config.pbtxt").read_text())
    assert fused.name == "endofuse" and fused.platform == "onnxruntime_onnx" and fused.max_batch_size == 8
    # two inputs, float32, dims without the batch dim
    assert [(t.name, t.data_type, list(t.dims)) for t in fused.input] == [
        ("wli", 11, [3, SIZE, SIZE]), ("nbi", 11, [3, SIZE, SIZE])]  # 11 = TYPE_FP32 in Triton's DataType
    assert [(t.name, list(t.dims)) for t in fused.output] == [("logits", [2, SIZE, SIZE])]
    # dynamic batching with a small queue delay
    assert list(fused.dynamic_batching.preferred_batch_size) == [4, 8]
    assert 0 < fused.dynamic_batching.max_queue_delay_microseconds <= 1000
    # warm-up samples cover both inputs
    assert [w.batch_size for w in fused.model_warmup] == [1, 8]
    assert all(sorted(w.inputs) == ["nbi", "wli"] for w in fused.model_warmup)
    assert not fused.HasField("optimization")
    wli_only = parse_model_config((root / "endofuse_missing_nbi" / "config.pbtxt").read_text())
    assert [t.name for t in wli_only.input] == ["wli"]
    assert check_repository(root) == ["endofuse", "endofuse_missing_nbi"]


def test_served_model_files_run_with_the_declared_shapes(repository):
    root, _ = repository
    config = parse_model_config((root / "endofuse" / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(root / "endofuse" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = config.dynamic_batching.preferred_batch_size[-1]
    feeds = {t.name: np.ones((batch, *t.dims), np.float32) for t in config.input}
    (logits,) = session.run(None, feeds)
    assert logits.shape == (batch, *config.output[0].dims)
    np.testing.assert_array_equal(logits, 2.0)


def test_fp16_asks_for_the_tensorrt_accelerator(tmp_path):
    write_triton_repository(tmp_path / "repo", stand_in_export(tmp_path, size=SIZE), settings=TritonSettings(fp16=True))
    config = parse_model_config((tmp_path / "repo" / "endofuse" / "config.pbtxt").read_text())
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}


def _edit(root: Path, old: str, new: str) -> None:
    path = root / "endofuse" / "config.pbtxt"
    text = path.read_text()
    assert old in text, f"{old!r} not in the generated config"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old, new, match", [
    ("TYPE_FP32", "TYPE_FLOAT32", "has no value named TYPE_FLOAT32"),            # misspelt enum
    ("max_queue_delay_microseconds", "max_queue_delay_us", "has no field named"),  # unknown field
    ('name: "endofuse"', 'name: "other"', "is not the folder name"),
    (f"dims: [ 3, {SIZE}, {SIZE} ]", f"dims: [ 3, {SIZE}, {SIZE + 1} ]", "do not match the ONNX graph"),
    ('name: "nbi"', 'name: "nbi_frame"', "do not match the ONNX graph"),
    ("preferred_batch_size: [ 4, 8 ]", "preferred_batch_size: [ 4, 16 ]", "exceeds max_batch_size"),
    ('key: "nbi"', 'key: "wli2"', "warm-up sample 'zeros_batch1' covers"),
    ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "model.plan is missing"),
])
def test_a_wrong_config_is_caught(repository, old, new, match):
    root, _ = repository
    _edit(root, old, new)
    with pytest.raises(ValueError, match=match):
        check_repository(root)


def test_fixed_batch_export_is_refused_for_dynamic_batching(tmp_path):
    with pytest.raises(EndofuseError, match="fixed batch size; .* --dynamic-batch"):
        write_triton_repository(tmp_path / "repo", stand_in_export(tmp_path, batch=1, size=SIZE))


def test_empty_folder_is_not_a_repository(tmp_path):
    with pytest.raises(ValueError, match="not a Triton model repository"):
        check_repository(tmp_path)
