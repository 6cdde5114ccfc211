"""`endofuse evaluate`: score a checkpoint on a dataset split, write metrics.json, masks, overlays."""
from __future__ import annotations

import argparse
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.model import load_checkpoint
from endofuse.model.dataset import load_split, split_csv_path
from endofuse.outputs import OutputFolder, refuse_overlap
from endofuse.train.evaluate import evaluate_model, print_summary, write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("segment", "classify"), default="segment",
                        help="segment (default) or classify: accuracy, macro-F1, i2i/t2i Recall@k and MRR")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (reference CSV format)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="endofuse checkpoint (.pt); needed with --data (with --video: default the bundled demo "
                             "weights)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="test: Test.csv (default); train: Training.csv / Train.csv")
    parser.add_argument("--wli-only", action="store_true", help="ignore NBI (the model's missing-NBI path)")
    parser.add_argument("--force", action="store_true",
                        help="write into an --out folder that holds files endofuse did not write")


def main(args: argparse.Namespace) -> int:
    if args.data is None or args.checkpoint is None:
        raise EndofuseError("give --data DIR and --checkpoint CKPT (or --video DIR for a video with a mask video)")
    if args.task == "classify":
        from endofuse.train.classify_command import evaluate_main

        return evaluate_main(args)
    records = load_split(args.data, args.split)
    model = load_checkpoint(args.checkpoint)  # every input checked before the output folder is made
    folder = check_eval_outputs(args, records)
    try:
        metrics = evaluate_model(model, records, args.out, wli_only=args.wli_only)
        metrics.update({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                        "model": model.name, "img_size": model.img_size})
        write_json_atomic(args.out / "metrics.json", metrics)
    finally:
        folder.commit()
    print(print_summary(metrics))
    print(f"wrote {args.out / 'metrics.json'}, {len(records)} mask(s) and overlay(s)")
    return 0


def check_eval_outputs(args: argparse.Namespace, records) -> OutputFolder:
    """Before any work: --out is not a file, holds no input (e.g. the dataset's masks/), has no foreign files."""
    inputs = {"--checkpoint": args.checkpoint}
    csv_path = split_csv_path(args.data, args.split)
    if csv_path is not None:
        inputs["the split CSV"] = csv_path
    for r in records:
        inputs.update({f"row {r.row} WLI": r.wli, f"row {r.row} NBI": r.nbi, f"row {r.row} mask": r.label})
    refuse_overlap({"--out": args.out}, inputs, output_dirs=["--out"])
    return OutputFolder(args.out, "evaluate --out", force=args.force).prepare()
