"""OpenVINO IR (`.xml` + `.bin`) from an endofuse ONNX export, and INT8 IR via NNCF.

An IR pair is written for each graph of an export: `NAME.xml` (inputs `wli`,
`nbi`) and `NAME.missing-nbi.xml` (input `wli`). The ONNX file's endofuse
metadata (config, input size, label, source hash, format version) is copied
into the IR's `rt_info` under `endofuse`, plus the precision: `f32`/`bf16`
(weights stay f32 in the file; the precision is the inference hint an engine
uses when opened with precision "auto") or `int8` (NNCF post-training
quantisation, calibrated on frame pairs). Weights are never compressed to f16,
so an f32 IR computes what the ONNX file computes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from endofuse.errors import EndofuseError, MissingFileError
from endofuse.realtime.engines.onnx_export import FUSED, MISSING_NBI, check_metadata, missing_nbi_path_for
from endofuse.realtime.engines.openvino_env import import_nncf, import_openvino, openvino_core, quiet_nncf

IR_SUFFIXES = (".xml",)
RT_INFO_KEY = "endofuse"
PRECISIONS = ("auto", "f32", "bf16", "int8")


def onnx_metadata(path: Path) -> dict[str, str]:
    """The endofuse metadata of an ONNX file (without loading external weights)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise EndofuseError(f"model file {path} is not a readable ONNX file ({type(exc).__name__}); "
                            f"export it again with `endofuse export`") from exc
    return {p.key: p.value for p in proto.metadata_props}


def ir_metadata(model, path: Path) -> dict[str, str]:
    """The endofuse metadata stored in an IR's rt_info ({} when there is none)."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info([RT_INFO_KEY]).astype(dict).items()}


def read_model(core, path: Path):
    """(ov.Model, endofuse metadata) of an IR or ONNX file; unreadable files raise EndofuseError naming them."""
    ov = import_openvino()
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    if path.suffix.lower() in IR_SUFFIXES and not path.with_suffix(".bin").is_file():
        raise EndofuseError(f"OpenVINO IR {path} has no weights file {path.with_suffix('.bin').name} beside it; "
                            f"copy both files (or export again with `endofuse export --format openvino`)")
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ trace
        raise EndofuseError(f"model file {path} cannot be read by OpenVINO {ov.__version__} (truncated or "
                            f"corrupt?); export it again with `endofuse export`") from exc
    meta = ir_metadata(model, path) if path.suffix.lower() in IR_SUFFIXES else onnx_metadata(path)
    return model, meta


def onnx_to_ir(onnx_path: Path, out_xml: Path, precision: str = "f32",
               calibration: list[tuple[np.ndarray, np.ndarray]] | None = None, log=print) -> Path:
    """Writes IR for `onnx_path` and its missing-NBI sibling (when present) at `out_xml`; returns `out_xml`.

    `precision` "int8" quantises with NNCF on `calibration` ((wli, nbi) preprocessed batches).
    """
    if precision not in PRECISIONS:
        raise EndofuseError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not calibration:
        raise EndofuseError("INT8 calibration needs at least one frame pair")
    ov, core = import_openvino(), openvino_core()
    onnx_path, out_xml = Path(onnx_path), Path(out_xml)
    if out_xml.suffix.lower() not in IR_SUFFIXES:
        raise EndofuseError(f"--out {out_xml}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(onnx_path, out_xml, FUSED, ("wli", "nbi"))]
    if missing_nbi_path_for(onnx_path).is_file():
        jobs.append((missing_nbi_path_for(onnx_path), missing_nbi_path_for(out_xml), MISSING_NBI, ("wli",)))
    for source, target, variant, names in jobs:
        model, meta = read_model(core, source)
        check_metadata(meta, source, variant)
        if meta.get("precision", "fp32") != "fp32":
            raise EndofuseError(f"{source} is a {meta['precision']} ONNX export; OpenVINO IR is made from the fp32 "
                                f"export (`endofuse export --format onnx`)")
        if precision == "int8":
            model = quantize_ir(model, [dict(zip(names, pair[: len(names)], strict=True)) for pair in calibration])
        for key, value in {**meta, "precision": precision}.items():
            model.set_rt_info(str(value), [RT_INFO_KEY, key])
        _save_atomically(ov, model, target)
        log(f"openvino {variant:<11} {precision} -> {target}")
    return out_xml


def quantize_ir(model, feeds: list[dict[str, np.ndarray]]):
    """NNCF post-training INT8 quantisation of an f32 ov.Model, calibrated on `feeds`.

    ModelType.TRANSFORMER keeps the attention softmax/normalisation inputs in
    float (NNCF's scheme for attention blocks); convolutions and the
    projection/MLP matmuls become int8 (u8 activations x s8 weights, per channel).
    Bias correction is off: on the tiny demo model with real frames it left the
    mask agreement with f32 unchanged (0.999) and took 40 % of the quantisation time.
    """
    nncf = import_nncf()
    options = nncf.AdvancedQuantizationParameters(disable_bias_correction=True)
    with quiet_nncf():
        return nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds),
                             preset=nncf.QuantizationPreset.PERFORMANCE, model_type=nncf.ModelType.TRANSFORMER,
                             advanced_parameters=options)


def _save_atomically(ov, model, target: Path) -> None:
    """Writes NAME.xml + NAME.bin so that a cache reader never sees a half-written pair."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(tmp, target)


def cached_int8_ir(onnx_path: Path, calibration: str | os.PathLike | None = None, count: int = 32) -> Path:
    """INT8 IR of an fp32 export, calibrated on `count` pairs from `calibration` (else synthetic); made once, cached.

    The cache key holds the ONNX file's hash, the tool versions and the calibration set (for a dataset folder,
    a hash of the preprocessed frames themselves, so edited frames give a new calibration).
    """
    import hashlib

    from endofuse.realtime.engines.cache import build_entry, cache_entry, file_sha256

    ov, nncf = import_openvino(), import_nncf()
    meta = onnx_metadata(Path(onnx_path))
    size = (int(meta.get("img_size", 0)),) * 2
    batches, data_key = None, f"synthetic{count}"
    if calibration is not None:
        batches = calibration_batches(calibration, count, size)
        digest = hashlib.sha256(b"".join(a.tobytes() for pair in batches for a in pair)).hexdigest()
        data_key = f"data{digest[:16]}x{len(batches)}"
    folder = cache_entry("openvino-int8", file_sha256(onnx_path)[:24], f"ov{ov.__version__.split('-')[0]}",
                         f"nncf{nncf.__version__}", data_key)
    path = folder / "model.xml"
    wants_missing = missing_nbi_path_for(onnx_path).is_file()
    build_entry(folder, lambda: onnx_to_ir(onnx_path, path, "int8", batches or calibration_batches(None, count, size),
                                           log=lambda line: None),
                usable=missing_nbi_path_for(path).is_file() == wants_missing)
    return path


def calibration_batches(folder: str | os.PathLike | None, count: int,
                        size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed (wli, nbi) batches for calibration: `count` pairs from a dataset folder, else synthetic."""
    from endofuse.realtime.engines.calibration import calibration_pairs, preprocess_pair

    return [preprocess_pair(p, size) for p in calibration_pairs(folder, count)]
