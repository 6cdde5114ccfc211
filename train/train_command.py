"""`endofuse train`: train on a dataset folder in the reference CSV format (single process or torchrun)."""
from __future__ import annotations

import argparse
from pathlib import Path

from endofuse.errors import MissingFileError
from endofuse.train.recipes import ABLATIONS, RECIPES, parse_ablate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("segment", "classify"), default="segment",
                        help="segment (default) or classify: frame classifier on cls_train.csv/cls_test.csv")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (Training.csv/Train.csv, Test.csv)")
    parser.add_argument("--model", default=None,
                        help="tiny | small | paper (default tiny); --task classify: entrep-tiny (default) | entrep-b16")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="run folder (last.pt, best.pt, log.csv, ...)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="default",
                        help="paper: SGD 0.01 + poly, no augmentation; default: AdamW + cosine + augmentation")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--batch-size", type=int, default=None, help="per process (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the recipe's)")
    parser.add_argument("--amp", action="store_true", help="bf16/fp16 autocast (CUDA only)")
    parser.add_argument("--pretrained", type=Path, default=None, help="R50+ViT-B_16.npz for both encoders")
    parser.add_argument("--ablate", default=None, help=f"comma list of terms to switch off: {','.join(ABLATIONS)}")
    parser.add_argument("--img-size", type=int, default=None, help="override the model's input size (multiple of 16)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="held-out validation fraction when the folder has no Test.csv (default 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="default: the recipe's (1234)")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (logs still print per epoch)")
    parser.add_argument("--force", action="store_true",
                        help="start a run in an --out folder that holds files endofuse did not write")
    methods = parser.add_argument_group("options from related work (docs/training.md)")
    methods.add_argument("--fusion", choices=("token", "dmaf"), default="token",
                         help="tiny/small: token = learned missing-NBI token (default); dmaf = masked attention "
                              "over both modalities (DMAF-Net)")
    methods.add_argument("--negatives", choices=("batch", "cluster"), default="batch",
                         help="DACL negatives: batch (default) or cluster = CM-CGNS cluster-guided hard negatives "
                              "with false-negative masking")
    methods.add_argument("--clusters", type=int, default=16, help="k-means centroids for --negatives cluster (16)")
    methods.add_argument("--centroid-momentum", type=float, default=0.9,
                         help="centroid <- m * centroid + (1 - m) * mean(members) (0.9)")
    methods.add_argument("--mir", action="store_true",
                         help="masked NBI reconstruction from the WLI shared features (training-only head)")
    methods.add_argument("--distill", default=None,
                         help="comma list: relation, prototype (full path teaches the missing-NBI path)")
    methods.add_argument("--dtm", action="store_true", help="Dynamic Training Monitoring of the distillation terms")


def main(args: argparse.Namespace) -> int:
    if args.pretrained is not None and not args.pretrained.is_file():
        raise MissingFileError(f"--pretrained: file not found: {args.pretrained}")
    if args.task == "classify":
        from endofuse.train.classify_command import train_main

        return train_main(args)
    from endofuse.train.methods import MethodOptions, parse_distill
    from endofuse.train.trainer import TrainOptions, train

    args.model = args.model or "tiny"
    options = TrainOptions(
        data=args.data, out=args.out, model=args.model, epochs=args.epochs, recipe=args.recipe, resume=args.resume,
        batch_size=args.batch_size, lr=args.lr, amp=args.amp, pretrained=args.pretrained,
        ablate=parse_ablate(args.ablate), img_size=args.img_size, val_fraction=args.val_fraction, seed=args.seed,
        device=args.device, progress=not args.no_progress, force=args.force,
        methods=MethodOptions(fusion=args.fusion, negatives=args.negatives, clusters=args.clusters,
                              centroid_momentum=args.centroid_momentum, mir=args.mir,
                              distill=parse_distill(args.distill), dtm=args.dtm),
    )
    return train(options)
