"""TensorRT: what can be checked without it (plan compatibility, backend choice, errors) and, where
`tensorrt` and CUDA exist, a real build compared with torch. TensorRT cannot be installed on the CPU CI
machines, so the build test skips there with that reason."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from endofuse.errors import EndofuseError
from endofuse.realtime.engines import factory, open_engine, resolve_backend, tensorrt_available
from endofuse.realtime.engines.tensorrt_engine import PlanInfo, check_plan_compatibility, read_plan_info, sidecar_for

from conftest import random_pair, torch_logits

INFO = PlanInfo(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.8.0",
                onnx_sha256="ab" * 32, precision="fp16", max_batch=8, img_size=160, num_classes=2,
                model_label="tiny (demo weights, synthetic data)")


def test_plan_from_another_gpu_is_refused_naming_both():
    with pytest.raises(EndofuseError, match=r"built for GPU NVIDIA H100 80GB HBM3 \(sm 9\.0\), this machine has "
                                            r"NVIDIA L4 \(sm 8\.9\); rebuild"):
        check_plan_compatibility(INFO, Path("m.plan"), "NVIDIA L4", "8.9", "10.8.0")


def test_plan_from_another_tensorrt_version_is_refused():
    with pytest.raises(EndofuseError, match=r"built with TensorRT 10\.8\.0, this machine has 10\.13\.3"):
        check_plan_compatibility(INFO, Path("m.plan"), INFO.gpu_name, "9.0", "10.13.3")


def test_matching_plan_passes_the_check():
    check_plan_compatibility(INFO, Path("m.plan"), INFO.gpu_name, INFO.compute_capability, INFO.tensorrt_version)


def test_plan_sidecar_round_trip_and_missing_sidecar(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a real plan")
    with pytest.raises(EndofuseError, match=r"m\.plan has no m\.plan\.json beside it"):
        read_plan_info(plan)
    sidecar_for(plan).write_text(json.dumps(asdict(replace(INFO, max_batch=4))))
    assert read_plan_info(plan) == replace(INFO, max_batch=4)
    sidecar_for(plan).write_text("{\"gpu_name\": 1}")
    with pytest.raises(EndofuseError, match="unreadable plan description"):
        read_plan_info(plan)


def test_auto_backend_order(monkeypatch, tmp_path):
    monkeypatch.setattr(factory, "tensorrt_available", lambda: True)
    assert resolve_backend("auto", tmp_path / "m.pt") == "tensorrt"
    monkeypatch.setattr(factory, "tensorrt_available", lambda: False)
    monkeypatch.setattr(factory, "openvino_preferred", lambda device=None: False)  # not x86 / no openvino
    assert resolve_backend("auto", tmp_path / "m.pt") == "onnxruntime"
    assert resolve_backend("auto", tmp_path / "m.plan") == "tensorrt"
    with pytest.raises(EndofuseError, match="TensorRT plan; it runs only with backend 'tensorrt'"):
        resolve_backend("onnxruntime", tmp_path / "m.plan")


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT and CUDA are present here")
def test_without_tensorrt_opening_a_plan_says_why(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(EndofuseError, match="TensorRT is not installed|no CUDA device is visible"):
        open_engine(plan)


@pytest.mark.skipif(not tensorrt_available(), reason="needs the tensorrt package and a CUDA GPU (not installable on "
                                                     "the CPU CI machines)")
def test_tensorrt_engine_matches_torch(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("ENDOFUSE_CACHE", str(tmp_path / "cache"))
    engine = open_engine(exported.onnx_path, backend="tensorrt", fp16=False)
    assert engine.name == "tensorrt"
    wli, nbi = random_pair(batch=2)
    for second in (nbi, None):
        np.testing.assert_allclose(engine.infer(wli, second), torch_logits(exported.model, wli, second),
                                   atol=1e-3, rtol=0)
    # second open: the plan comes from the cache (no rebuild)
    cached = sorted((tmp_path / "cache" / "tensorrt").glob("*/model*.plan"))
    assert [p.name for p in cached] == ["model.missing-nbi.plan", "model.plan"]
    mtimes = [p.stat().st_mtime_ns for p in cached]
    open_engine(exported.onnx_path, backend="tensorrt", fp16=False)
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
