"""ONNX / OpenVINO export of the ENTRep classifier's towers, with parity checks, and their CPU runners.

`NAME.onnx`: the image tower, input `image` (N, 3, S, S) RGB [0, 1], outputs
`logits` (N, C) and `image_embedding` (N, E, unit norm); `NAME.text.onnx`: the text
tower, input `tokens` (N, context_length) int64 BPE ids, output `text_embedding`.
LoRA is merged into the weights first, so the graphs are plain CLIP towers.
Metadata carries the class names, input size and context length.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from endofuse.errors import EndofuseError
from endofuse.model.entrep import EntrepModel

TASK = "classify"
PARITY_TOLERANCE = 1e-4


class ImageTower(nn.Module):
    def __init__(self, model: EntrepModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(self.model.encode_image(image), dim=-1)
        return self.model.classify_features(z), z


class TextTower(nn.Module):
    def __init__(self, model: EntrepModel):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens), dim=-1)


def text_path_for(path: str | os.PathLike) -> Path:
    """`x/cls.onnx` -> `x/cls.text.onnx` (`.xml` likewise)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.text{path.suffix}")


def _export(module: nn.Module, example: torch.Tensor, input_name: str, outputs: list[str], path: Path,
            metadata: dict[str, str]) -> None:
    import onnx

    from endofuse.realtime.engines.onnx_export import ONNX_OPSET, _quiet_exporter

    batch = torch.export.Dim("batch", min=1, max=1024)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(module, (example,), str(tmp), dynamo=True, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=outputs, dynamic_shapes={input_name: {0: batch}},
                          optimize=True, verbose=False, external_data=False)
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def export_classifier_onnx(model: EntrepModel, out_path: str | os.PathLike, text: bool = True,
                           tolerance: float = PARITY_TOLERANCE, log=print) -> dict[str, float]:
    """Write the image tower (and the text tower) and check each against torch; returns max |diff| per file."""
    from endofuse.model.entrep_weights import tokenize

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().float().eval()
    model.merge_lora()
    meta = {"endofuse_task": TASK, "model_name": model.name, "classes": json.dumps(model.classes),
            "img_size": str(model.img_size), "context_length": str(model.config.context_length)}
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, model.img_size, model.img_size, generator=generator)
    jobs = [(ImageTower(model), image, "image", ["logits", "image_embedding"], out_path)]
    if text:
        tokens = tokenize(model.prompts(model.classes[0])[:2], model.config.context_length)
        jobs.append((TextTower(model), tokens, "tokens", ["text_embedding"], text_path_for(out_path)))
    parity = {}
    for module, example, name, outputs, path in jobs:
        _export(module, example, name, outputs, path, {**meta, "tower": name})
        with torch.no_grad():
            expected = module(example)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = OnnxTower(path).run(example.numpy())
        parity[str(path)] = max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected, strict=True))
        log(f"parity {name:<6} max |onnx - torch| = {parity[str(path)]:.3g} (tolerance {tolerance:g}) -> {path}")
        if not parity[str(path)] <= tolerance:
            raise EndofuseError(f"ONNX export {path}: outputs differ from torch by {parity[str(path)]:.3g}")
    return parity


def onnx_to_openvino(onnx_path: str | os.PathLike, out_xml: str | os.PathLike) -> Path:
    """Convert an exported tower to OpenVINO IR (f32 weights), keeping the metadata as rt_info."""
    from endofuse.realtime.engines.openvino_env import import_openvino

    ov = import_openvino()
    out_xml = Path(out_xml)
    if out_xml.suffix.lower() != ".xml":
        raise EndofuseError(f"--out {out_xml}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    meta = read_metadata(onnx_path)
    model = ov.convert_model(str(onnx_path))
    for key, value in meta.items():
        model.set_rt_info(value, ["endofuse", key])
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out_xml), compress_to_fp16=False)
    return out_xml


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("endofuse_task") != TASK:
        raise EndofuseError(f"{path}: not an exported endofuse classifier tower")
    return meta


class OnnxTower:
    """An exported tower on ONNX Runtime (CPU); `run(x)` -> list of output arrays.

    `threads`: intra-op threads (None: the physical cores). The live classifier
    uses 1 (see `realtime.classifier`).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from endofuse.realtime.engines.ort_engine import create_session

        self.meta = read_metadata(path)
        self.session = create_session(Path(path), device="cpu", threads=threads)
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input: x})


class OpenVinoTower:
    """A tower (IR `.xml` or the exported `.onnx`) on OpenVINO's CPU plugin, latency hint.

    f32 inference precision, so it matches the ONNX file; `threads`: inference
    threads (None: OpenVINO's choice, the physical cores).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from endofuse.realtime.engines.openvino_env import openvino_core

        core = openvino_core()  # one per process: see openvino_core
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            from endofuse.realtime.engines.openvino_engine import cpu_pinning

            config |= {"INFERENCE_NUM_THREADS": str(threads), "ENABLE_CPU_PINNING": cpu_pinning(threads)}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        result = self.compiled(x)
        return [result[out] for out in self.compiled.outputs]


def cached_image_tower(checkpoint: str | os.PathLike, log=None) -> Path:
    """The checkpoint's image tower as ONNX, exported (with its parity check) once into the engine cache.

    Keyed by the checkpoint's sha256 and the versions that shape the export, like
    the segmentation engines' cache.
    """
    from endofuse import __version__
    from endofuse.model.entrep_weights import load_classifier
    from endofuse.realtime.engines.cache import build_entry, cache_entry, file_sha256
    from endofuse.realtime.engines.onnx_export import ONNX_OPSET

    folder = cache_entry("classifier-onnx", file_sha256(checkpoint)[:32], f"endofuse{__version__}",
                         f"torch{torch.__version__}", f"opset{ONNX_OPSET}")
    path = folder / "image.onnx"

    def export() -> None:
        if log is not None:
            log(f"exporting the classifier's image tower to {path} (once per checkpoint)")
        export_classifier_onnx(load_classifier(checkpoint), path, text=False, log=lambda *_: None)

    build_entry(folder, export)
    return path


def is_classifier_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint written by `endofuse train --task classify` (reads the file's header dict)."""
    from endofuse.model.entrep_weights import FORMAT

    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to judge here; the segmentation loader reports it
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def export_command(source: Path, fmt: str, out: Path, log=print) -> int:
    """`endofuse export` of a classifier checkpoint: onnx (image + text towers) or openvino (IR of both)."""
    from endofuse.model.entrep_weights import load_classifier

    if fmt not in ("onnx", "openvino"):
        raise EndofuseError(f"--format {fmt}: a classifier checkpoint exports as onnx or openvino")
    model = load_classifier(source)
    if fmt == "onnx":
        export_classifier_onnx(model, out, log=log)
        log(f"wrote {out} (image tower) and {text_path_for(out)} (text tower)")
        return 0
    if out.suffix.lower() != ".xml":
        raise EndofuseError(f"--out {out}: an OpenVINO IR is written as NAME.xml (+ NAME.bin)")
    onnx_path = out.with_suffix(".onnx")
    export_classifier_onnx(model, onnx_path, log=log)
    for src, xml in ((onnx_path, out), (text_path_for(onnx_path), text_path_for(out))):
        onnx_to_openvino(src, xml)
        log(f"openvino f32 -> {xml}")
    return 0
