"""The evidence behind the default `--view-gate`: view similarity of the same view moved, and of other views.

    python benchmarks/view_gate.py --json benchmarks/results/view_gate.json

`endofuse.realtime.pairing.nbi_memory.view_similarity` compares the WLI frame
now with the last WLI frame before the NBI look. On the real sample's WLI
frames (../shared/data/wli-nbi-sample, or --data) it measures: each frame
against itself moved on purpose (shift, rotation, zoom, brightness, blur: the
scope held at the same place, or moved away), and every pair of different
frames (other views). The default threshold should pass the small moves and
fail the other views.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import cv2
import numpy as np

from _common import add_json_argument, record, report, table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wli-nbi-sample"

# (name, same place?, dx, dy as a fraction of the frame, rotation degrees, zoom, gain, blur sigma)
MOVES = [
    ("shift 2 %", True, 0.02, 0.02, 0, 1.0, 1.0, 0),
    ("shift 5 %", True, 0.05, 0.0, 0, 1.0, 1.0, 0),
    ("rotate 10 deg", True, 0, 0, 10, 1.0, 1.0, 0),
    ("zoom 1.15", True, 0, 0, 0, 1.15, 1.0, 0),
    ("brightness x1.3", True, 0, 0, 0, 1.0, 1.3, 0),
    ("blur sigma 5", True, 0, 0, 0, 1.0, 1.0, 5),
    ("shift 10 %", None, 0.10, 0.0, 0, 1.0, 1.0, 0),
    ("zoom 1.5", None, 0, 0, 0, 1.5, 1.0, 0),
    ("shift 20 %", False, 0.20, 0.0, 0, 1.0, 1.0, 0),
    ("shift 35 %, 20 %", False, 0.35, 0.20, 0, 1.0, 1.0, 0),
]


def moved(image: np.ndarray, dx: float, dy: float, rotation: float, zoom: float, gain: float, blur: float):
    h, w = image.shape[:2]
    warp = cv2.getRotationMatrix2D((w / 2, h / 2), rotation, zoom)
    warp[:, 2] += (dx * w, dy * h)
    out = cv2.warpAffine(image, warp, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = cv2.convertScaleAbs(out, alpha=gain)
    return cv2.GaussianBlur(out, (0, 0), blur) if blur else out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder in the reference CSV format")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    from endofuse.realtime.pairing.nbi_memory import DEFAULT_VIEW_GATE, view_signature, view_similarity

    with open(args.data / "Test.csv", newline="") as f:
        paths = [args.data / row["wli_path"] for row in csv.DictReader(f)]
    frames = [cv2.imread(str(p)) for p in paths]
    if any(f is None for f in frames):
        raise SystemExit(f"cannot read the WLI frames listed in {args.data / 'Test.csv'}")
    signatures = [view_signature(f) for f in frames]
    rows, details = [], {"frames": [p.name for p in paths], "moves": {}}
    for name, same, *how in MOVES:
        values = [view_similarity(s, view_signature(moved(f, *how))) for f, s in zip(frames, signatures, strict=True)]
        details["moves"][name] = values
        verdict = {True: "same place", False: "moved away", None: "in between"}[same]
        rows.append([name, verdict, min(values), float(np.median(values)), max(values),
                     sum(v >= DEFAULT_VIEW_GATE for v in values)])
    others = [view_similarity(a, b) for a, b in itertools.combinations(signatures, 2)]
    details["other_views"] = others
    rows.append([f"other views ({len(others)} pairs)", "other view", min(others), float(np.median(others)),
                 max(others), sum(v >= DEFAULT_VIEW_GATE for v in others)])
    columns = ["WLI frame vs", "expected", "min", "median", "max", f"pass gate {DEFAULT_VIEW_GATE:g}"]
    note = (f"{len(frames)} real WLI frames; similarity = Pearson correlation of 32x32 blurred grey thumbnails "
            "of the central 70 % (nbi_memory.view_signature)")
    tab = table("View similarity on the real sample", columns, rows, note)
    details["default_view_gate"] = DEFAULT_VIEW_GATE
    report(record("view_gate", "View gate: similarity of moved and other views", [tab], argv, details), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
