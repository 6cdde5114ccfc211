"""Re-save a run's best.pt as the bundled fp16 demo weights.

    python -m endofuse.train.demo_weights RUN [--dest model/weights/tiny_synthetic_demo.pt]

The weights are stored in fp16 (half the size; `load_checkpoint` gives float32
back) with the run's validation score, options and source in `extra`, so the
file says how it was made.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from endofuse.model import load_checkpoint, read_checkpoint, save_checkpoint
from endofuse.model.checkpoint import DEMO_WEIGHTS


def export_demo_weights(run: Path, dest: Path = DEMO_WEIGHTS) -> dict:
    """Copy `run/best.pt` to `dest` as fp16 weights; returns the stored `extra`."""
    best = Path(run) / "best.pt"
    payload = read_checkpoint(best)
    model = load_checkpoint(best)
    extra = {
        "description": f"{model.name} trained by `endofuse train` on synthetic WLI/NBI data (endofuse synth)",
        "label": f"{model.name} (demo weights, synthetic data)",
        "val": payload["extra"].get("val", {}),
        "val_source": payload["extra"].get("val_source", ""),
        "epoch": payload["extra"].get("epoch"),
        "options": payload["extra"].get("options", {}),
    }
    save_checkpoint(dest, model, extra=extra, half=True)
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endofuse.train.demo_weights", description=__doc__.split("\n")[1])
    parser.add_argument("run", type=Path, help="run folder holding best.pt")
    parser.add_argument("--dest", type=Path, default=DEMO_WEIGHTS)
    args = parser.parse_args(argv)
    extra = export_demo_weights(args.run, args.dest)
    size_mb = args.dest.stat().st_size / 1e6
    print(f"wrote {args.dest} ({size_mb:.1f} MB, fp16), val Dice {extra['val'].get('val_dice', float('nan')):.4f} "
          f"at epoch {extra['epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
