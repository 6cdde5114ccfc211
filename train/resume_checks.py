"""What `endofuse train` checks about its run folder before any work: outputs vs inputs, and --resume.

A resumed run must be the same run: the checkpoint's stored options are compared with the ones given
now, and a difference in what defines the weights (data, model, input size, recipe, ...) is refused
by name instead of silently training nothing and rewriting config.json.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.outputs import OutputFolder, refuse_overlap

# option -> its flag; a resumed run must match on each (--epochs may grow: continuing is its purpose)
RUN_DEFINING = {"data": "--data", "model": "--model", "img_size": "--img-size", "recipe": "--recipe",
                "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed", "ablate": "--ablate",
                "val_fraction": "--val-fraction", "overrides": "model overrides", "methods": "the related-work "
                "options (--fusion, --negatives, --mir, --distill, --dtm)"}


def check_run_folder(out: Path, data: Path, pretrained: Path | None, resume: bool, force: bool,
                     images: dict[str, Path] | None = None) -> OutputFolder | None:
    """Refuse a file as --out, a run folder that is or holds the dataset or a listed image (`images`:
    label -> path), and (new runs) a foreign folder.

    Returns the prepared folder of a new run (its files are recorded as endofuse's when it ends).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EndofuseError(f"--out '{out}' is an existing file: give a run folder (e.g. runs/tiny)")
    inputs = {"--data": data, "--pretrained": pretrained, **(images or {})}
    refuse_overlap({"--out": out}, inputs, output_dirs=["--out"])
    if resume:
        return None  # continuing a run: its folder is the run's own
    return OutputFolder(out, "train --out", force=force).prepare()


def _same(key: str, stored, given) -> bool:
    if key == "data":
        return os.path.realpath(str(stored)) == os.path.realpath(str(given))
    # through JSON: tuples and lists (a checkpoint round trip) compare equal
    return json.dumps(stored, sort_keys=True, default=str) == json.dumps(given, sort_keys=True, default=str)


def check_resume(payload: dict, options: dict, last: Path) -> None:
    """`payload` (read from last.pt) can continue a run with `options` (TrainOptions.as_dict())."""
    extra = payload.get("extra") or {}
    missing = [k for k in ("optimizer", "scheduler", "epoch", "batch_in_epoch", "rng") if k not in extra]
    if missing:
        raise EndofuseError(f"--resume: {last} holds weights but no training state ({', '.join(missing)}): it "
                            "cannot be resumed (a best.pt or converted checkpoint?); start a new --out")
    stored = extra.get("options")
    if not isinstance(stored, dict):
        raise EndofuseError(f"--resume: {last} does not record the options it was trained with; start a new --out")
    for key, flag in RUN_DEFINING.items():
        if key in stored and key in options and not _same(key, stored[key], options[key]):
            raise EndofuseError(f"--resume: {last} was trained with {flag} {stored[key]!r}, not {options[key]!r}; "
                                "resume with the same options or start a new --out")
