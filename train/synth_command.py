"""`endofuse synth`: write a synthetic WLI/NBI dataset folder and/or video pair.

The dataset is in the reference format (`Training.csv`, `Test.csv`, `imgs/<id>_1.png`
WLI, `<id>_2.png` NBI, `<id>_1_label.png` mask 0/255). `--video` writes
`wli.mp4`, `nbi.mp4` and `mask.mp4` of one moving scene; `--video S --endoscope` instead writes one
processor output switched between WLI and NBI (`endoscope.mp4`, `truth.csv`, `mask.mp4`, see
`endofuse.model.synthetic_endoscope`). Deterministic per `--seed`.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from endofuse.checks import check_fps
from endofuse.errors import EndofuseError, InvalidOptionError
from endofuse.model.synthetic import DomainShift, SyntheticScene, make_pair
from endofuse.model.synthetic_endoscope import TRUTH_COLUMNS, SyntheticEndoscope, clip_frames
from endofuse.outputs import OutputFolder, atomic_file, write_image

DEFAULT_SIZE = (288, 320)
DEFAULT_ENDOSCOPE_SIZE = (720, 1280)  # a processor output scaled from 1080p
SEED_STRIDE = 1_000_003  # pair seeds of different --seed values never collide for < 1M pairs


def parse_size(text: str) -> tuple[int, int]:
    """"HxW" (or a single number for a square) -> (H, W)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 16:
        raise argparse.ArgumentTypeError(f"size must look like 288x320 (H x W, each >= 16), got {text!r}")
    return values[0], values[1]


def pair_seed(seed: int, index: int) -> int:
    return seed * SEED_STRIDE + index


def write_dataset(out: Path, train_pairs: int, test_pairs: int, size: tuple[int, int], seed: int,
                  nbi_size: tuple[int, int] | None = None, progress: bool = True,
                  shift: DomainShift | None = None) -> None:
    """Write `train_pairs` + `test_pairs` independent pairs and the two CSVs; test scenes differ from train.

    `shift` renders the test pairs (only) under a `DomainShift`: other colour calibration, blur and
    a larger WLI/NBI misregistration than the training pairs.
    """
    imgs = out / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rows = {"Training.csv": [], "Test.csv": []}
    total = train_pairs + test_pairs
    for i in tqdm(range(total), desc="synth pairs", unit="pair", disable=not progress):
        wli, nbi, mask = make_pair(pair_seed(seed, i), size, nbi_size, shift=shift if i >= train_pairs else None)
        stem = f"synth{seed}_{i:05d}"
        names = (f"imgs/{stem}_1.png", f"imgs/{stem}_2.png", f"imgs/{stem}_1_label.png")
        for name, image in zip(names, (wli, nbi, mask * np.uint8(255)), strict=True):
            write_image(out / name, image, durable=False)  # a full disk is one line naming the file
        rows["Training.csv" if i < train_pairs else "Test.csv"].append(names)
    for csv_name, entries in rows.items():
        with atomic_file(out / csv_name, "w", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["wli_path", "nbi_path", "label_path"])
            writer.writerows(entries)


def write_video(out: Path, seconds: float, fps: float, size: tuple[int, int], seed: int,
                nbi_size: tuple[int, int] | None = None, progress: bool = True) -> None:
    """`wli.mp4`, `nbi.mp4`, `mask.mp4` (0/255) of one moving SyntheticScene."""
    out.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(seed, size, nbi_size)
    sizes = {"wli": scene.size, "nbi": scene.nbi_size, "mask": scene.size}
    writers = _open_writers(out, sizes, fps)
    try:
        for i in tqdm(range(int(round(seconds * fps))), desc="synth video", unit="frame", disable=not progress):
            wli, nbi, mask = scene.frame(i / fps)
            writers["wli"].write(wli)
            writers["nbi"].write(nbi)
            writers["mask"].write(cv2.cvtColor(mask * np.uint8(255), cv2.COLOR_GRAY2BGR))
    finally:
        for w in writers.values():
            w.release()


def _open_writers(out: Path, sizes: dict, fps: float) -> dict:
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    writers = {k: cv2.VideoWriter(str(out / f"{k}.mp4"), fourcc, fps, (s[1], s[0])) for k, s in sizes.items()}
    for k, w in writers.items():
        if not w.isOpened():
            for opened in writers.values():
                opened.release()
            raise EndofuseError(f"could not open {out / (k + '.mp4')} for writing (OpenCV mp4v)")
    return writers


def write_endoscope_video(out: Path, seconds: float, fps: float, size: tuple[int, int], seed: int,
                          progress: bool = True) -> int:
    """`endoscope.mp4` (one processor output switched WLI -> NBI -> WLI), `mask.mp4` (0/255, full frame) and
    `truth.csv` (per frame: modality, content box, informative, defect); returns the frame count."""
    out.mkdir(parents=True, exist_ok=True)
    clip = SyntheticEndoscope(clip_frames(seconds, fps), size=size, fps=fps, seed=seed)
    writers = _open_writers(out, {"endoscope": clip.size, "mask": clip.size}, fps)
    try:
        for i in tqdm(range(clip.frames), desc="synth endoscope", unit="frame", disable=not progress):
            frame, mask = clip.render(i)
            writers["endoscope"].write(frame)
            writers["mask"].write(cv2.cvtColor(mask * np.uint8(255), cv2.COLOR_GRAY2BGR))
    finally:
        for w in writers.values():
            w.release()
    with atomic_file(out / "truth.csv", "w", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(clip.truth_rows())
    return clip.frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--pairs", type=int, default=None, help="training pairs to write (Training.csv)")
    parser.add_argument("--test-pairs", type=int, default=None,
                        help="test pairs (Test.csv); default pairs // 4, at least 1")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="WLI frame size HxW (default 288x320); with --endoscope the output frame size "
                             "(default 720x1280)")
    parser.add_argument("--nbi-size", type=parse_size, default=None, help="NBI frame size HxW (default: --size)")
    parser.add_argument("--video", type=float, default=None, metavar="SECONDS",
                        help="also write a moving WLI/NBI mp4 pair")
    parser.add_argument("--endoscope", action="store_true",
                        help="with --video: write one processor output instead (endoscope.mp4: content area in a "
                             "black border, on-screen text, WLI -> NBI -> WLI with transition frames, a few "
                             "blurred/dark/glare frames), its truth.csv and mask.mp4")
    parser.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="write into a folder that holds files endofuse did not write (same names are replaced)")
    d = DomainShift()
    parser.add_argument("--shift", action="store_true",
                        help=f"test pairs differ from the training pairs: per-channel colour gain +-{d.color_gain:g}, "
                             f"gamma in [1/{1 + d.gamma:g}, {1 + d.gamma:g}], Gaussian blur sigma "
                             f"{d.blur_sigma[0]:g}-{d.blur_sigma[1]:g} px per 320 px, NBI misregistration up to "
                             f"{d.shift * 100:g}%% shift, {d.rotation:g} degrees, "
                             f"zoom +-{d.zoom:g}")
    parser.add_argument("--classes", action="store_true",
                        help="also write a classification folder (cls_train.csv, cls_test.csv, cls_imgs/): "
                             "normal / small_lesion / large_lesion, WLI and NBI, one scene per pair")


def main(args: argparse.Namespace) -> int:
    if args.pairs is None and args.video is None:
        raise EndofuseError("nothing to write: give --pairs N and/or --video SECONDS")
    if args.video is not None:
        if not (math.isfinite(args.video) and args.video > 0):
            raise EndofuseError(f"--video must be a finite number of seconds > 0, got {args.video}")
        check_fps(args.fps)
    if args.endoscope:
        if args.video is None:
            raise EndofuseError("--endoscope needs --video SECONDS")
        clip_frames(args.video, args.fps)  # too short a clip: one line, before the folder is touched
    if args.size is None:
        args.size = DEFAULT_ENDOSCOPE_SIZE if args.endoscope else DEFAULT_SIZE
    # an existing dataset (CSVs, masks) is never overwritten unless it is one synth wrote, or --force
    folder = OutputFolder(args.out, "synth OUT", force=args.force).prepare()
    try:
        return _write(args)
    finally:
        folder.commit()


def _write(args: argparse.Namespace) -> int:
    if args.pairs is not None:
        if args.pairs < 1:
            raise InvalidOptionError(f"--pairs must be >= 1, got {args.pairs}")
        test_pairs = args.test_pairs if args.test_pairs is not None else max(1, args.pairs // 4)
        if args.classes:  # before any file is written
            from endofuse.train.classify_synth import check_scene_counts

            check_scene_counts(args.pairs, test_pairs)
        write_dataset(args.out, args.pairs, test_pairs, args.size, args.seed, args.nbi_size,
                      shift=DomainShift() if args.shift else None)
        print(f"wrote {args.pairs} training + {test_pairs} test pairs to {args.out} (Training.csv, Test.csv)")
        if args.classes:
            from endofuse.train.classify_synth import write_classification_dataset

            counts = write_classification_dataset(args.out, args.pairs, test_pairs, args.size, args.seed)
            print(f"wrote {counts['cls_train.csv']} + {counts['cls_test.csv']} classification images to {args.out} "
                  f"(cls_train.csv, cls_test.csv)")
    elif args.classes:
        raise EndofuseError("--classes needs --pairs N (the number of training scenes)")
    if args.video is not None and args.endoscope:
        frames = write_endoscope_video(args.out, args.video, args.fps, args.size, args.seed)
        names = ", ".join(str(args.out / n) for n in ("endoscope.mp4", "truth.csv", "mask.mp4"))
        print(f"wrote {names} ({frames} frames)")
    elif args.video is not None:
        write_video(args.out, args.video, args.fps, args.size, args.seed, args.nbi_size)
        print(f"wrote {args.out / 'wli.mp4'}, {args.out / 'nbi.mp4'}, {args.out / 'mask.mp4'}")
    return 0
