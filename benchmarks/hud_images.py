"""The HUD in each mode of one endoscope stream, for docs/pipeline.md: real pipeline output frames.

    python benchmarks/hud_images.py --out docs/images

Runs `build_pipeline(endoscope=...)` with the bundled demo weights on a
synthetic processor output (WLI -> NBI -> WLI at the same place -> WLI
elsewhere, `model.synthetic_endoscope`) and on a side-by-side stream made of a
synthetic WLI/NBI pair, and writes one frame per mode (the middle frame of the
mode's first run of frames; for HOLD the first frame the quality gate held) as
`endoscope-<mode>.png`, scaled to 800 px wide. The stabiliser runs with `run`'s
defaults; `--overlay-timing live` shows the overlay's age in the HUD.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

WIDTH = 800


def first_runs(results) -> dict:
    """mode -> the middle result of that mode's first run of consecutive frames."""
    runs: dict[str, list] = {}
    current = None
    for r in results:
        if r.mode not in runs:
            runs[r.mode], current = [r], r.mode
        elif r.mode == current:
            runs[r.mode].append(r)
        else:
            current = None if r.mode in runs else r.mode
    picked = {mode: run[len(run) // 2] for mode, run in runs.items()}
    # a frame held by the quality gate shows more than one held while the modality settles
    flagged = [r for r in results if r.mode == "HOLD" and r.extras.get("quality_flags")]
    if flagged:
        picked["HOLD"] = flagged[0]
    return picked


def side_by_side_frames(count: int, size=(720, 1280)) -> list[np.ndarray]:
    """Two views side by side on one output (NBI left), each in its own black-bordered content area."""
    from endofuse.model.synthetic import SyntheticScene

    h, w = size
    scene = SyntheticScene(3, (h - 160, w // 2 - 80), misregistration=(0.0, 0.0, 0.0))
    frames = []
    for i in range(count):
        wli, nbi, _ = scene.frame(i / 30)
        frame = np.zeros((h, w, 3), np.uint8)
        frame[80:h - 80, 40:w // 2 - 40] = nbi
        frame[80:h - 80, w // 2 + 40:w - 40] = wli
        frames.append(frame)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--overlay-timing", default="sync", choices=("sync", "live"))
    args = parser.parse_args(argv)
    from endofuse.model.synthetic_endoscope import SyntheticEndoscope
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.output.stabilise import StabiliseConfig
    from endofuse.realtime.pairing.endoscope import EndoscopeConfig
    from endofuse.realtime.pipeline import build_pipeline

    engine = open_engine(backend=args.engine)
    clip = SyntheticEndoscope(120)
    runs = [(MemorySource([clip.render(i)[0] for i in range(clip.frames)], "synthetic endoscope"), EndoscopeConfig()),
            (MemorySource(side_by_side_frames(12), "side by side"), EndoscopeConfig(layout="side-by-side:nbi-left"))]
    picked = {}
    for source, config in runs:
        pipeline = build_pipeline(engine=engine, endoscope=source, endoscope_config=config, warmup_frames=0,
                                  stabilise=StabiliseConfig(), overlay_timing=args.overlay_timing)
        picked.update({m: r for m, r in first_runs(list(pipeline)).items() if m not in picked})
    args.out.mkdir(parents=True, exist_ok=True)
    for mode, result in sorted(picked.items()):
        h, w = result.overlay.shape[:2]
        image = cv2.resize(result.overlay, (WIDTH, round(h * WIDTH / w)), interpolation=cv2.INTER_AREA)
        path = args.out / f"endoscope-{mode.lower()}.png"
        cv2.imwrite(str(path), image)
        print(f"{path}: frame {result.index}, mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
