"""Frame classification + retrieval: what each ENTRep component does for entrep-tiny, and its latency.

    python benchmarks/classify.py [--scenes 90] [--test-scenes 30] [--epochs 30] [--seeds 3] [--json OUT]

1. Writes a synthetic 3-class folder (`endofuse synth --classes`: normal /
   small_lesion / large_lesion, WLI and NBI images) and trains entrep-tiny per
   variant and seed: full; last-layer CLS only (no multi-level fusion); no
   SLERP; no image-text contrastive term. Scores the LAST epoch's weights on
   cls_test.csv (best.pt is chosen on that split, so it would flatter), mean and
   std over seeds: accuracy, macro-F1, i2i and t2i Recall@1 and MRR, train time.
2. Image-tower latency per frame (batch 1) in torch, ONNX Runtime and OpenVINO
   (when its engine is installed), medians measured in this one run.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from endofuse.machine import time_calls
from endofuse.model.entrep_weights import load_classifier
from endofuse.train.classify import ClassifyOptions, train_classifier
from endofuse.train.classify_eval import evaluate_classifier
from endofuse.train.classify_synth import write_classification_dataset

from _common import add_json_argument, record, report, table

VARIANTS = {
    "full": {},
    "last CLS only": {"cls_layers": (4,)},
    "no SLERP": {"slerp_prob": 0.0},
    "no contrastive": {"contrastive_weight": 0.0},
}
METRICS = [("accuracy", ("accuracy",)), ("macro-F1", ("macro_f1",)), ("i2i R@1", ("i2i", "recall@1")),
           ("i2i MRR", ("i2i", "mrr")), ("t2i R@1", ("t2i", "recall@1")), ("t2i MRR", ("t2i", "mrr"))]


def pick(metrics: dict, path: tuple[str, ...]) -> float:
    for key in path:
        metrics = metrics[key]
    return float(metrics)


def finished(run: Path, epochs: int) -> bool:
    """A run of this many epochs is already complete (the benchmark is rerun after an interruption)."""
    if not (run / "last.pt").is_file():
        return False
    from endofuse.model.entrep_weights import read_classifier

    return read_classifier(run / "last.pt")["extra"].get("epoch") == epochs


def run_variant(args, data: Path, name: str, overrides: dict, seed: int) -> dict:
    run = args.out / "runs" / f"{name.replace(' ', '-')}-s{seed}"
    if not finished(run, args.epochs):
        shutil.rmtree(run, ignore_errors=True)
        code = train_classifier(ClassifyOptions(data=data, out=run, model="entrep-tiny", epochs=args.epochs,
                                                seed=seed, progress=False, overrides=dict(overrides), device="cpu"))
        if code != 0:  # stopped by a signal: stop the benchmark too
            raise SystemExit(code)
    with open(run / "log.csv", newline="") as f:
        seconds = sum(float(row["seconds"]) for row in csv.DictReader(f))  # training only, no validation
    metrics = evaluate_classifier(load_classifier(run / "last.pt"), data)
    return {"metrics": {label: pick(metrics, path) for label, path in METRICS}, "train_s": seconds}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def latency_rows(args, checkpoint: Path) -> list[list]:
    from endofuse.realtime.engines.classifier_export import ImageTower, OnnxTower, export_classifier_onnx

    model = load_classifier(checkpoint)
    model.merge_lora()
    x = torch.rand(1, 3, model.img_size, model.img_size)
    tower = ImageTower(model).eval()

    def eager():
        with torch.inference_mode():
            tower(x)

    rows = [["torch (eager, LoRA merged)", float(np.median(time_calls(eager, args.repeats, warmup=10)))]]
    onnx_path = args.out / "tower" / "cls.onnx"
    export_classifier_onnx(model, onnx_path, text=False, log=lambda *_: None)
    ort_tower = OnnxTower(onnx_path)
    rows.append(["onnxruntime", float(np.median(time_calls(lambda: ort_tower.run(x.numpy()), args.repeats,
                                                                warmup=10)))])
    try:
        from endofuse.realtime.engines.classifier_export import OpenVinoTower, onnx_to_openvino

        ov_tower = OpenVinoTower(onnx_to_openvino(onnx_path, onnx_path.with_suffix(".xml")))
        rows.append(["openvino (f32)", float(np.median(time_calls(lambda: ov_tower.run(x.numpy()), args.repeats,
                                                                    warmup=10)))])
    except ImportError:
        rows.append(["openvino (f32)", None])
    base = rows[0][1]
    return [[name, ms, None if ms is None else base / ms] for name, ms in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=90, help="training scenes (2 images each)")
    parser.add_argument("--test-scenes", type=int, default=30)
    parser.add_argument("--size", type=int, default=96, help="synthetic image size (square)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200, help="latency samples per engine")
    parser.add_argument("--out", type=Path, default=Path("bench_runs/classify"))
    add_json_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = args.out / "data"
    if not (data / "cls_test.csv").is_file():
        write_classification_dataset(data, args.scenes, args.test_scenes, (args.size, args.size), seed=0)
    results = {}
    for name, overrides in VARIANTS.items():
        results[name] = [run_variant(args, data, name, overrides, seed) for seed in range(args.seeds)]
        print(f"{name}: " + ", ".join(f"{k} {mean_std([r['metrics'][k] for r in results[name]])[0]:.3f}"
                                      for k, _ in METRICS), file=sys.stderr, flush=True)
    columns = ["variant"] + [f"{label} (mean ± std)" for label, _ in METRICS] + ["train s"]
    rows = []
    for name, runs in results.items():
        row = [name]
        for label, _ in METRICS:
            m, s = mean_std([r["metrics"][label] for r in runs])
            row.append(f"{m:.3f} ± {s:.3f}")
        row.append(statistics.fmean(r["train_s"] for r in runs))
        rows.append(row)
    ablation = table(f"entrep-tiny on synthetic 3-class frames ({2 * args.scenes} train / {2 * args.test_scenes} "
                     f"test images), {args.epochs} epochs, last-epoch weights, {args.seeds} seeds", columns, rows,
                     note="Retrieval on the test split: gallery = test images, a hit = same label; i2i leaves "
                          "the query out. Train s: the epochs' training time (no validation), on a shared machine.")
    checkpoint = args.out / "runs" / "full-s0" / "last.pt"
    latency = table("Image tower latency per frame (batch 1, entrep-tiny at 64 px)",
                    ["engine", "median ms", "speed-up vs torch"], latency_rows(args, checkpoint),
                    note="Medians of one run each; ratios are within this run.")
    rec = record("classify", "Frame classification and retrieval (ENTRep components)", [ablation, latency],
                 argv=argv, details={"runs": results, "variants": {k: {kk: list(v) if isinstance(v, tuple) else v
                                                                       for kk, v in o.items()}
                                                                   for k, o in VARIANTS.items()}})
    report(rec, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
