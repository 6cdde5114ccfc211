"""The live pipeline with and without `--classifier`: what the frame classifier costs, per engine.

    python benchmarks/classify_live.py [--engine auto] [--frames 300] [--rounds 3] [--json OUT]

The segmentation engine (bundled tiny weights, `--engine`) runs the whole
pipeline on a ring of synthetic WLI/NBI pairs in memory (as `endofuse bench`
does), once without a classifier and once per classifier configuration, in a
shuffled order per round; the table holds medians over the rounds, and every
ratio is against the run without a classifier in the same rounds (the machine
is shared: compare ratios, not absolute numbers). Configurations:

- the default (`FrameClassifier.open(ckpt)`: engine `auto`, one inference thread,
  OpenCV resize), and each engine explicitly (ONNX Runtime, OpenVINO, torch);
- "before": ONNX Runtime on all physical cores with torch's bilinear resize,
  the configuration this module replaced, to show what the change bought.

Also the image tower alone, batch 1, on one and on two threads (interleaved
calls, p50 / p90). The classifier is an untrained entrep-tiny at 64 px: the
weights do not change the cost.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from endofuse.machine import load_average

from _common import add_json_argument, record, report, table

PACED_FPS = 30.0


class TorchResizeClassifier:
    """The replaced configuration: torch's F.interpolate (OpenMP pool) in front of the tower."""

    def __init__(self, inner):
        self.inner = inner
        self.classes, self.img_size, self.label = inner.classes, inner.img_size, inner.label + " before"

    def __call__(self, model_input):
        x = torch.as_tensor(model_input).float().cpu()
        x = torch.nn.functional.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                                            align_corners=False)
        return self.inner(np.ascontiguousarray(x.numpy()))


def classifiers(checkpoint: Path, onnx_path: Path) -> dict:
    from endofuse.realtime.classifier import FrameClassifier
    from endofuse.realtime.engines.classifier_export import OnnxTower, read_metadata
    from endofuse.realtime.engines.ort_engine import physical_cores

    out = {"none": None, "default (auto)": FrameClassifier.open(checkpoint),
           "onnxruntime": FrameClassifier.open(onnx_path, "onnxruntime")}
    try:
        out["openvino"] = FrameClassifier.open(onnx_path, "openvino")
    except ImportError:
        pass
    out["torch"] = FrameClassifier.open(checkpoint, "torch")
    tower = OnnxTower(onnx_path, threads=physical_cores())
    meta = read_metadata(onnx_path)
    inner = FrameClassifier(lambda x: tower.run(x)[0], out["onnxruntime"].classes, int(meta["img_size"]),
                            f"onnxruntime x{physical_cores()} threads")
    out[f"before: onnxruntime x{physical_cores()} threads + torch resize"] = TorchResizeClassifier(inner)
    return out


def run_pipeline(engine, wli, nbi, classifier, frames: int, live: bool) -> dict:
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.pipeline import build_pipeline

    warmup = 20
    pipeline = build_pipeline(MemorySource(wli, "bench WLI", PACED_FPS, loops=None),
                              MemorySource(nbi, "bench NBI", PACED_FPS, loops=None), engine, live,
                              frames=frames + warmup, warmup_frames=warmup, classifier=classifier)
    rep = pipeline.run()
    stages = rep["stages_ms"]
    return {"fps": rep["fps"], "latency_p50": rep["latency_ms"]["p50"], "latency_p90": rep["latency_ms"]["p90"],
            "infer_p50": stages["infer"]["p50"],
            "classify_p50": stages["classify"]["p50"] if "classify" in stages else 0.0,
            "classify_p90": stages["classify"]["p90"] if "classify" in stages else 0.0,
            "load": load_average()[0]}


def noise_note(infer_p50: list[float]) -> str:
    """How much the load moved the numbers: the segmenter's own infer time does not depend on the classifier."""
    return (f"Noise floor: the segmenter's infer p50, the same work in every run, ranged "
            f"{min(infer_p50):.1f}-{max(infer_p50):.1f} ms over these runs; differences between rows smaller "
            f"than that spread are the machine's load, not the classifier.")


def tower_alone(onnx_path: Path, repeats: int) -> list[list]:
    from endofuse.realtime.engines.classifier_export import OnnxTower, OpenVinoTower

    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    towers = {f"onnxruntime, {t} thread(s)": OnnxTower(onnx_path, threads=t) for t in (1, 2)}
    try:
        towers.update({f"openvino, {t} thread(s)": OpenVinoTower(onnx_path, threads=t) for t in (1, 2)})
    except ImportError:
        pass
    times = {k: [] for k in towers}
    for tower in towers.values():
        for _ in range(20):
            tower.run(x)
    for _ in range(repeats):  # interleaved: every engine sees the same load
        for name, tower in towers.items():
            started = time.perf_counter()
            tower.run(x)
            times[name].append((time.perf_counter() - started) * 1000)
    return [[name, float(np.percentile(v, 50)), float(np.percentile(v, 90))] for name, v in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="auto", help="segmentation engine (default auto)")
    parser.add_argument("--frames", type=int, default=300, help="counted frames per pipeline run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (shuffled)")
    parser.add_argument("--repeats", type=int, default=300, help="tower-alone samples per configuration")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    add_json_argument(parser)
    args = parser.parse_args(argv)

    from endofuse.model.entrep import build_entrep
    from endofuse.model.entrep_weights import save_classifier
    from endofuse.realtime.commands.bench import load_ring
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.engines.classifier_export import cached_image_tower

    work = args.out or Path(tempfile.mkdtemp(prefix="endofuse-classify-live-"))
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checkpoint = save_classifier(work / "entrep-tiny.pt",
                                 build_entrep("entrep-tiny", ["normal", "small_lesion", "large_lesion"]))
    onnx_path = cached_image_tower(checkpoint)
    engine = open_engine(None, args.engine)
    wli, nbi, described = load_ring("synthetic", 60)
    configs = classifiers(checkpoint, onnx_path)
    runs = {(mode, name): [] for mode in ("max", "paced") for name in configs}
    for rnd in range(args.rounds):
        order = list(runs)
        random.Random(rnd).shuffle(order)
        for mode, name in order:
            runs[(mode, name)].append(run_pipeline(engine, wli, nbi, configs[name], args.frames, mode == "paced"))
        print(f"round {rnd + 1}/{args.rounds} done, load {load_average()}", file=sys.stderr, flush=True)

    def med(mode, name, key):
        return statistics.median(r[key] for r in runs[(mode, name)])

    rows = []
    for mode, name in runs:
        fps = med(mode, name, "fps")
        rows.append([mode, name, fps, fps / med(mode, "none", "fps"), med(mode, name, "latency_p50"),
                     med(mode, name, "latency_p50") / med(mode, "none", "latency_p50"), med(mode, name, "infer_p50"),
                     med(mode, name, "classify_p50"), med(mode, name, "classify_p90")])
    label = getattr(engine, "name", args.engine)
    infer = [r["infer_p50"] for rs in runs.values() for r in rs]
    live = table(f"Pipeline (tiny on {label}, {described}) without and with the classifier, medians of "
                 f"{args.rounds} shuffled rounds of {args.frames} frames",
                 ["mode", "classifier", "pairs/s", "pairs/s vs none", "latency p50 ms", "latency vs none",
                  "infer p50 ms", "classify p50 ms", "classify p90 ms"], rows,
                 note=f"max: as fast as possible, lossless; paced: sources at {PACED_FPS:g} fps, latest frame "
                      "wins. Ratios against the run without a classifier in the same rounds; the machine was "
                      f"shared (load in the record). {noise_note(infer)}")
    alone = table("entrep-tiny image tower alone (64 px, batch 1), interleaved calls",
                  ["engine", "p50 ms", "p90 ms"], tower_alone(onnx_path, args.repeats))
    rec = record("classify_live", "Frame classifier in the live pipeline", [live, alone], argv=argv,
                 details={"runs": {f"{m} | {n}": v for (m, n), v in runs.items()},
                          "classifier_labels": {k: (v.label if v is not None else None) for k, v in configs.items()}})
    report(rec, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
