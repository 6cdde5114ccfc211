"""`endofuse convert-reference IN.pth OUT.pt`: a reference MM-EndoCL checkpoint -> endofuse checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from endofuse.errors import InvalidInputError, MissingFileError
from endofuse.model.checkpoint import count_parameters, save_checkpoint
from endofuse.model.convert import convert_reference_state_dict, reference_model_kwargs
from endofuse.model.mm_endocl import MMEndoCL, build_model
from endofuse.outputs import check_output_file, refuse_overlap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IN.pth", help="checkpoint saved by the reference code (a state dict)")
    parser.add_argument("output", metavar="OUT.pt", help="where to write the endofuse checkpoint")
    parser.add_argument("--half", action="store_true", help="store float weights as fp16 (half the size)")


def convert_reference_file(source: Path, output: Path, half: bool = False) -> MMEndoCL:
    """Load (weights_only), convert, strict-load into `paper`, save ours; errors name the file."""
    if not source.is_file():
        raise MissingFileError(f"reference checkpoint not found: {source}")
    try:
        raw = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or non-torch file can fail anywhere inside the unpickler
        raise InvalidInputError(f"{source}: not a readable torch checkpoint (truncated or corrupt?): {exc}") from exc
    try:
        state = convert_reference_state_dict(raw)
        model = build_model("paper", **reference_model_kwargs(state))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InvalidInputError(f"{source}: cannot convert to the paper model: {exc}") from exc
    extra = {"converted_from": source.name, "source": "MM-EndoCL reference checkpoint"}
    save_checkpoint(output, model, extra=extra, half=half)
    return model


def main(args: argparse.Namespace) -> int:
    # the reference weights are never replaced by their conversion
    refuse_overlap({"OUT.pt": args.output}, {"IN.pth": args.source})
    check_output_file(args.output, "OUT.pt")
    model = convert_reference_file(Path(args.source), Path(args.output), half=args.half)
    print(
        f"converted {args.source} -> {args.output}: model 'paper', {count_parameters(model) / 1e6:.1f} M parameters, "
        f"{model.num_classes} classes, input {model.img_size}x{model.img_size}"
    )
    return 0
