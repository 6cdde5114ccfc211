"""`endofuse evaluate`: a dataset split (train/evaluate_command.py) or, with --video, a video pair with a mask
video through the live pipeline (realtime/commands/evaluate_video.py).

Dispatched here, above both packages, so train/ and realtime/ keep importing only model/ and kernels/.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.train import evaluate_command as dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from endofuse.realtime.output.stabilise import add_arguments as add_stage_arguments

    dataset.add_arguments(parser)
    parser.add_argument("--video", type=Path, default=None, metavar="DIR",
                        help="evaluate a video folder instead of --data: wli.mp4, nbi.mp4 and mask.mp4 as "
                             "`synth --video` writes; per-frame Dice/IoU, temporal metrics, first-shown delay")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads of the evaluation (torch), from 1 to the CPUs this process may use "
                             "(default: torch's choice)")
    add_stage_arguments(parser, timing=False)


def main(args: argparse.Namespace) -> int:
    if args.threads is not None:  # checked by the CLI (endofuse.checks.check_threads)
        import torch

        torch.set_num_threads(args.threads)
    if args.video is None:
        return dataset.main(args)
    if args.data is not None or args.task != "segment":
        raise EndofuseError("--video evaluates segmentation of a video folder: leave out --data and --task")
    from endofuse.realtime.commands.evaluate_video import main as video_main

    return video_main(args)
