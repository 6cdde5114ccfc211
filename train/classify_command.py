"""The `--task classify` halves of `endofuse train` and `endofuse evaluate` (their parsers hold the flags)."""
from __future__ import annotations

import argparse

from endofuse.errors import EndofuseError

SEGMENT_ONLY = {"ablate": None, "amp": False, "img_size": None}


def _reject_segment_flags(args: argparse.Namespace) -> None:
    used = [k for k, default in SEGMENT_ONLY.items() if getattr(args, k, default) != default]
    if getattr(args, "recipe", "default") != "default":
        used.append("recipe")
    if used:
        flags = ", ".join("--" + k.replace("_", "-") for k in used)
        raise EndofuseError(f"{flags}: segmentation-only, not used by --task classify (drop them)")


def train_main(args: argparse.Namespace) -> int:
    from endofuse.train.classify import ClassifyOptions, train_classifier

    _reject_segment_flags(args)
    options = ClassifyOptions(
        data=args.data, out=args.out, model=args.model or "entrep-tiny", epochs=args.epochs, resume=args.resume,
        batch_size=args.batch_size, lr=args.lr, pretrained=args.pretrained,
        seed=1234 if args.seed is None else args.seed, device=args.device, progress=not args.no_progress,
        force=args.force)
    return train_classifier(options)


def evaluate_main(args: argparse.Namespace) -> int:
    from endofuse.model.entrep_weights import load_classifier
    from endofuse.outputs import OutputFolder, refuse_overlap
    from endofuse.train.classify_data import classify_csv_path, load_classify_split
    from endofuse.train.classify_eval import evaluate_classifier, summary, write_metrics

    if getattr(args, "wli_only", False):
        raise EndofuseError("--wli-only: segmentation-only, not used by --task classify (drop it)")
    model = load_classifier(args.checkpoint)
    records = load_classify_split(args.data, args.split, model.classes)  # every bad row, before any work
    inputs = {"--checkpoint": args.checkpoint, "the split CSV": classify_csv_path(args.data, args.split)}
    inputs.update({f"{r.where} image": r.image for r in records})
    refuse_overlap({"--out": args.out}, inputs, output_dirs=["--out"])
    folder = OutputFolder(args.out, "evaluate --out", force=args.force).prepare()
    try:
        metrics = evaluate_classifier(model, args.data, args.split, records)
        metrics.update({"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                        "model": model.name, "img_size": model.img_size})
        write_metrics(args.out, metrics)
    finally:
        folder.commit()
    print(summary(metrics))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'confusion_matrix.png'}")
    return 0
