"""`endofuse evaluate --video DIR`: a recorded WLI/NBI video pair with a mask video, through the live pipeline.

    endofuse synth clips/ --video 10 --fps 30                       # wli.mp4, nbi.mp4, mask.mp4
    endofuse evaluate --video clips/ --out eval/                    # bundled demo weights, default stabiliser
    endofuse evaluate --video clips/ --checkpoint runs/tiny/best.pt --stabilise off --out eval/
    endofuse synth rec/ --video 10 --endoscope && endofuse evaluate --video rec/ --out eval/   # endoscope.mp4

The frames run losslessly through `build_pipeline` (the stage `run` and `bench`
use, same flags), on the torch engine, so the masks are the ones `endofuse run`
shows for the same frames and settings. metrics.json holds the per-frame Dice
and IoU against the mask video (white = lesion) beside the temporal metrics of
`model.temporal` and each lesion's delay from its first labelled frame to its
first shown frame. A folder with `endoscope.mp4` (one processor output, as
`synth --video S --endoscope` writes) and no `wli.mp4` runs as one endoscope
stream (`run --endoscope`): only the frames that carry a mask (FUSED,
FUSED-MEMORY, WLI-ONLY) are scored, inside the content area; NBI and HOLD
frames are left out (listed by mode in metrics.json `modes`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from endofuse.errors import InvalidInputError, MissingFileError
from endofuse.outputs import OutputFolder, finite_or_none, refuse_overlap, write_json

VIDEO_FILES = ("wli.mp4", "nbi.mp4", "mask.mp4")
ENDOSCOPE_VIDEO = "endoscope.mp4"


class LabelVideo:
    """The mask video read in step with the pipeline: `labels(index)` is frame `index`'s mask (bool)."""

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        self.path, self.size = path, size  # (H, W) of the WLI frames
        self._capture = cv2.VideoCapture(str(path))
        if not self._capture.isOpened():
            raise InvalidInputError(f"mask video '{path}': OpenCV cannot open it")
        self._index, self._mask = -1, None

    def __call__(self, index: int) -> np.ndarray:
        while self._index < index:
            ok, image = self._capture.read()
            if not ok:
                raise InvalidInputError(f"mask video '{self.path}' ends before frame {index} of the WLI video")
            self._index += 1
            if image.shape[:2] != self.size:
                raise InvalidInputError(f"mask video '{self.path}' frame {self._index}: {image.shape[1]}x"
                                        f"{image.shape[0]}, the WLI frames are {self.size[1]}x{self.size[0]}")
            self._mask = image.max(axis=2) > 127  # 0/255 as `synth --video` writes; the codec blurs edges
        return self._mask

    def close(self) -> None:
        self._capture.release()


def evaluate_video(engine, folder: Path, stabilise, wli_only: bool = False) -> dict:
    """Metrics of one video folder (wli.mp4, nbi.mp4 unless `wli_only`, mask.mp4) through the pipeline."""
    from endofuse.realtime.output.mask_stage import MASK_MODES
    from endofuse.realtime.output.overlay import OverlayStyle
    from endofuse.realtime.pipeline import build_pipeline

    wli, nbi, mask = (folder / name for name in VIDEO_FILES)
    endoscope = folder / ENDOSCOPE_VIDEO
    if not wli.is_file() and endoscope.is_file():  # one processor output switched between WLI and NBI
        wli, wli_only = endoscope, True
    for path in (wli, mask) if wli_only else (wli, nbi, mask):
        if not path.is_file():
            raise MissingFileError(f"--video '{folder}': no {path.name} (synth --video writes wli.mp4, nbi.mp4 and "
                                   "mask.mp4; synth --video --endoscope endoscope.mp4 and mask.mp4)")
    capture = cv2.VideoCapture(str(wli))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
    capture.release()
    labels = LabelVideo(mask, size)
    sources = {"endoscope": str(wli)} if wli == endoscope else {
        "wli_source": str(wli), "nbi_source": None if wli_only else str(nbi)}
    try:
        pipeline = build_pipeline(engine=engine, live=False, warmup_frames=0, style=OverlayStyle(hud=False),
                                  stabilise=stabilise, labels=labels, **sources)
        try:  # the frames scored: those that carry a mask (every frame with two inputs)
            scored = [r.index for r in pipeline if r.mode in MASK_MODES]
        finally:
            pipeline.close()
        report = pipeline.report()
        metrics = pipeline.stabiliser.metrics
    finally:
        labels.close()
    per_frame = [{"frame": i, "dice": d, "iou": u} for i, d, u in zip(scored, metrics.dice, metrics.iou, strict=True)]
    out = {"video": str(folder), "nbi": not wli_only or wli == endoscope, "engine": report["engine"],
           "model": report["model"], "fps": metrics.fps, "temporal": report["temporal"], "per_frame": per_frame}
    if wli == endoscope:
        out["endoscope"], out["modes"] = str(endoscope), report["modes"]
    return out


def main(args: argparse.Namespace) -> int:
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.output.stabilise import config_from_args

    stabilise = config_from_args(args)  # a bad value fails before any work
    folder = Path(args.video)
    if not folder.is_dir():
        raise MissingFileError(f"--video '{folder}' is not a folder (synth --video writes one)")
    refuse_overlap({"--out": args.out}, {"--video": folder, "--checkpoint": args.checkpoint}, output_dirs=["--out"],
                   input_dirs=["--video"])
    out = OutputFolder(args.out, "evaluate --out", force=args.force).prepare()
    try:
        engine = open_engine(args.checkpoint, backend="torch", device="cpu")
        metrics = evaluate_video(engine, folder, stabilise, wli_only=args.wli_only)
        metrics["checkpoint"] = None if args.checkpoint is None else str(args.checkpoint)
        write_json(args.out / "metrics.json", finite_or_none(metrics))
    finally:
        out.commit()
    print(summary(metrics["temporal"]))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def summary(t: dict) -> str:
    delays = ", ".join(str(d) for d in t["first_shown_delay_frames"]) or "-"
    return (f"{t['frames']} frames, stabilise {t['settings']['stabilise']}: Dice {t['dice']:.4f}, IoU {t['iou']:.4f}, "
            f"mTC {t['mtc']:.4f}, {t['toggles_per_min']:.1f} toggles/min, short-run share {t['short_run_share']:.2f}, "
            f"{t['lesions']} lesion(s), {t['lesions_missed']} missed, first-shown delay (frames) {delays}")
