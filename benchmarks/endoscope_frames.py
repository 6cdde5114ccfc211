"""Endoscope frames: CPU cost per frame of the per-frame analysis (content area + modality + quality gate).

    python benchmarks/endoscope_frames.py --json benchmarks/results/endoscope-frames.json
    python benchmarks/endoscope_frames.py --size 1080x1920 --frames 60 --rounds 5

Renders `--frames` processor output frames of `--size` with
`endofuse.model.synthetic_endoscope` (1080p-like by default: a WLI -> NBI -> WLI
clip with transitions and blurred/dark/glare frames) and times, in CPU time of
the calling thread, `FrameAnalyzer.analyze` per frame (the content-area check,
the modality reading + hysteresis and the quality gate, as the pipeline runs
them) and each stage alone. In the same rounds it times a full-resolution
baseline that computes the same statistics on every pixel of the content area
and detects the content area on every frame: the ratio shows what the strided
samples and the detect-once tracker save. The target is 0.5 ms per frame.

Part 2 (when `../shared/data/wli-nbi-sample` is present) prints the quality
measures of the 10 real frames as they are and degraded on purpose (the table
in docs/pipeline.md).
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from endofuse.machine import time_calls
from endofuse.model.synthetic_endoscope import BLUR, DARK, GLARE, SyntheticEndoscope, degrade
from endofuse.realtime.input.content_area import detect_content_area
from endofuse.realtime.input.frame_analysis import time_analysis
from endofuse.realtime.input.quality import CENTRE, GLARE_LEVEL, assess_quality
from endofuse.train.synth_command import parse_size

from _common import add_json_argument, record, report, table

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wli-nbi-sample"
TARGET_MS = 0.5


def full_resolution_baseline(frame: np.ndarray) -> tuple:
    """The same three answers from every pixel: detection each frame, R/G and the measures on the whole crop."""
    area = detect_content_area(frame)
    crop = area.crop(frame).astype(np.float32)
    lit = crop.max(axis=2) > 24
    rg = crop[..., 2][lit].sum() / max(crop[..., 1][lit].sum(), 1.0)
    h, w = crop.shape[:2]
    y0, x0 = int(h * (1 - CENTRE) / 2), int(w * (1 - CENTRE) / 2)
    centre = crop[y0:h - y0, x0:w - x0]
    green = np.ascontiguousarray(centre[..., 1])
    sharpness = cv2.Laplacian(green, cv2.CV_32F).var() / max(float(green.var()), 1.0)
    glare = (centre.min(axis=2) >= GLARE_LEVEL).mean()
    return area, rg, sharpness, glare, centre.mean()


def quality_table() -> dict | None:
    if not (SAMPLE / "Training.csv").is_file():
        return None
    rows = []
    with open(SAMPLE / "Training.csv", encoding="utf-8") as f:
        pairs = list(csv.DictReader(f))
    for i, pair in enumerate(pairs):
        for column, mode in (("wli_path", "WLI"), ("nbi_path", "NBI")):
            image = cv2.imread(str(SAMPLE / pair[column]))
            row = [f"pair {i + 1} {mode}"]
            for defect in (None, BLUR, GLARE, DARK):
                q = assess_quality(image if defect is None else degrade(image, defect, seed=i))
                row.append(f"{q.sharpness:.3f} / {q.glare_fraction:.2f} / {q.brightness:.0f} "
                           f"{','.join(q.flags) or 'ok'}")
            rows.append(row)
    note = ("Each cell: sharpness / glare fraction / brightness, then the flags raised. Degraded on purpose with "
            "endofuse.model.synthetic_endoscope.degrade: blur = Gaussian sigma 1% of the image side, glare = six "
            "saturated spots, dark = a quarter of the exposure. Thresholds: sharpness < 0.008 blur, glare > 0.16, "
            "brightness < 60 dark.")
    return table("Quality measures of the 10 real sample frames, as they are and degraded on purpose",
                 ["frame", "original", "blurred", "glare-spotted", "darkened"], rows, note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=(1080, 1920), help="output frame size HxW (1080x1920)")
    parser.add_argument("--frames", type=int, default=60, help="distinct frames (>= 60; default 60)")
    parser.add_argument("--rounds", type=int, default=5, help="times each frame is replayed (default 5)")
    add_json_argument(parser)
    args = parser.parse_args(argv)

    clip = SyntheticEndoscope(args.frames, size=args.size, seed=0)
    frames = [clip.render(i)[0] for i in range(args.frames)]
    analysis = time_analysis(frames, rounds=args.rounds)
    it = iter(frames * (args.rounds + 1))
    baseline = time_calls(lambda: full_resolution_baseline(next(it)), len(frames) * args.rounds, warmup=2,
                          clock=time.thread_time)
    ours = analysis["per_frame_ms"]
    base = {"mean": statistics.fmean(baseline), "p50": statistics.median(baseline)}
    rows = [["analyze (all three stages)", ours["mean"], ours["p50"], ours["p99"], TARGET_MS / ours["mean"]]]
    rows += [[f"  {name} alone", s["mean"], s["p50"], s["p99"], None] for name, s in analysis["stages_ms"].items()]
    rows += [["content area detection (on a layout change)", analysis["detection_ms"]["mean"],
              analysis["detection_ms"]["p50"], analysis["detection_ms"]["p99"], None],
             ["full-resolution baseline (detect + every pixel)", base["mean"], base["p50"], None, None]]
    h, w = args.size
    note = (f"{args.frames} frames x {args.rounds} rounds of {h}x{w}; content area {analysis['content_area']} "
            f"(redetections {analysis['redetections']}). CPU time of the calling thread. "
            f"Target {TARGET_MS} ms per frame: mean is {ours['mean'] / TARGET_MS:.2f} x the target; the "
            f"full-resolution baseline costs {base['mean'] / ours['mean']:.1f} x the analysis "
            f"({base['mean'] / ours['mean']:.1f} = baseline mean / analyze mean, this run).")
    tables = [table("Per-frame analysis of one processor output frame, CPU ms",
                    ["what", "mean ms", "p50 ms", "p99 ms", "target / mean"], rows, note)]
    quality = quality_table()
    if quality is not None:
        tables.append(quality)
    details = {"analysis": analysis, "baseline_ms": base, "target_ms": TARGET_MS,
               "speedup_vs_baseline": base["mean"] / ours["mean"]}
    report(record("endoscope_frames", "Endoscope frames: per-frame analysis cost", tables, argv, details), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
