"""`endofuse evaluate`: score a checkpoint on a dataset split, write metrics.json, masks, overlays."""
from __future__ import annotations

import argparse
from pathlib import Path

from endofuse.model import load_checkpoint
from endofuse.model.dataset import load_split
from endofuse.train.evaluate import evaluate_model, print_summary, write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("segment", "classify"), default="segment",
                        help="segment (default) or classify: accuracy, macro-F1, i2i/t2i Recall@k and MRR")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (reference CSV format)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="endofuse checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="test: Test.csv (default); train: Training.csv / Train.csv")
    parser.add_argument("--wli-only", action="store_true", help="ignore NBI (the model's missing-NBI path)")


def main(args: argparse.Namespace) -> int:
    if args.task == "classify":
        from endofuse.train.classify_command import evaluate_main

        return evaluate_main(args)
    records = load_split(args.data, args.split)
    model = load_checkpoint(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_model(model, records, args.out, wli_only=args.wli_only)
    metrics.update({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                    "model": model.name, "img_size": model.img_size})
    write_json_atomic(args.out / "metrics.json", metrics)
    print(print_summary(metrics))
    print(f"wrote {args.out / 'metrics.json'}, {len(records)} mask(s) and overlay(s)")
    return 0
