"""`endofuse export` end to end (in-process CLI), INT8 quantisation, and calibration frames."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from endofuse import cli
from endofuse.realtime.engines import open_engine
from endofuse.realtime.engines.calibration import dataset_pairs, preprocess_pair, synthetic_pairs
from endofuse.realtime.engines.onnx_export import missing_nbi_path_for
from endofuse.realtime.engines.tritonserver_repo import check_repository
from endofuse.realtime.engines.tritonserver_schema import parse_model_config

from conftest import SIZE, torch_logits


def test_onnx_export_command_passes_checkpoint_hash_and_flags(exported, reuse_export, tmp_path, capsys):
    from endofuse.realtime.engines.cache import file_sha256

    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(exported.checkpoint), "--format", "onnx", "--out", str(out),
                     "--dynamic-batch"]) == 0
    (call,) = reuse_export
    assert call["dynamic_batch"] is True and call["source_sha256"] == file_sha256(exported.checkpoint)
    assert call["model_label"] == "tiny (tiny.pt)"
    assert f"wrote {out} and {missing_nbi_path_for(out)}" in capsys.readouterr().out


def test_int8_export_is_quantised_and_close_to_fp32(exported, reuse_export, tmp_path, capsys):
    out = tmp_path / "m.int8.onnx"
    assert cli.main(["export", "--checkpoint", str(exported.checkpoint), "--format", "onnx-int8", "--out", str(out),
                     "--calibration-pairs", "6"]) == 0
    assert "calibrated on 6 synthetic pairs" in capsys.readouterr().out
    for path in (out, missing_nbi_path_for(out)):
        graph = onnx.load(str(path)).graph
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "QLinearConv"} <= ops, ops  # ORT's operator form
        int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert len(int8_weights) >= 10, "conv/matmul weights should be stored as int8"
    engine = open_engine(out)
    assert engine.name == "onnxruntime-int8"
    # scored on held-out synthetic frames against the fp32 torch model
    for pair in synthetic_pairs(3, first_seed=500):
        wli, nbi = preprocess_pair(pair, (SIZE, SIZE))
        for second in (nbi, None):
            expected, got = torch_logits(exported.model, wli, second), engine.infer(wli, second)
            spread = expected.max() - expected.min()
            assert np.abs(got - expected).max() < 0.1 * spread
            assert (got.argmax(1) == expected.argmax(1)).mean() > 0.9


def test_triton_repo_command(exported, reuse_export, tmp_path, capsys):
    out = tmp_path / "repo"
    assert cli.main(["export", "--checkpoint", str(exported.checkpoint), "--format", "triton-repo", "--out", str(out),
                     "--max-batch-size", "4", "--queue-delay-us", "250", "--name", "laryngo"]) == 0
    assert reuse_export[0]["dynamic_batch"] is True  # forced: Triton batches dynamically
    assert check_repository(out) == ["laryngo", "laryngo_missing_nbi"]
    config = parse_model_config((out / "laryngo" / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and config.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert [list(t.dims) for t in config.input] == [[3, SIZE, SIZE]] * 2
    assert "no TensorRT on this machine" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--fp16"], "--fp16 applies to TensorRT plans"),
    (["--format", "tensorrt"], "--format tensorrt needs the tensorrt package and a CUDA GPU"),
    (["--format", "onnx", "--checkpoint", "/nonexistent/x.pt"], "checkpoint not found: /nonexistent/x.pt"),
])
def test_export_errors_are_one_line(args, message, tmp_path, capsys):
    if "tensorrt" in args:
        from endofuse.realtime.engines import tensorrt_available
        if tensorrt_available():
            pytest.skip("TensorRT and CUDA are present here")
    assert cli.main(["export", "--out", str(tmp_path / "x.onnx"), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_calibration_frames_from_the_real_sample(sample_data_dir):
    rows = (sample_data_dir / "Training.csv").read_text().strip().splitlines()[1:]
    pairs = dataset_pairs(sample_data_dir)
    assert len(pairs) == len(rows)
    for pair in pairs:
        assert pair.wli.dtype == np.uint8 and pair.wli.ndim == 3 and pair.nbi.ndim == 3
        assert pair.mask.shape == pair.wli.shape[:2] and set(np.unique(pair.mask)) <= {0, 1}
        assert 0 < pair.mask.mean() < 1
    wli, nbi = preprocess_pair(pairs[0], (SIZE, SIZE))
    assert wli.shape == nbi.shape == (1, 3, SIZE, SIZE) and wli.dtype == np.float32
    assert 0 <= wli.min() and wli.max() <= 1


def test_bad_dataset_rows_are_named(tmp_path):
    (tmp_path / "Training.csv").write_text("wli_path,nbi_path,label_path\na.png,,c.png\n")
    with pytest.raises(Exception, match=r"Training.csv row 1 \(line 2\): expected 3 paths"):
        dataset_pairs(tmp_path)
    (tmp_path / "Training.csv").write_text("wli_path,nbi_path,label_path\na.png,b.png,c.png\n")
    with pytest.raises(Exception, match=r"cannot read image .*a\.png"):
        dataset_pairs(tmp_path)
