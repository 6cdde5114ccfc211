"""`endofuse demo`: serve the browser demo (Gradio) on this machine."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from endofuse.errors import EndofuseError, MissingFileError
from endofuse.realtime.engines import BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes it to the network)")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained .pt checkpoint (or exported model file); default: the bundled demo weights")
    parser.add_argument("--engine", default="auto", choices=BACKENDS, help="inference backend (default auto)")
    parser.add_argument("--classifier", default=None,
                        help="a `train --task classify` checkpoint: enables the Classify & search tab")
    parser.add_argument("--gallery", default=None, help="an `endofuse index` folder searched by that tab")


def main(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise MissingFileError(f"checkpoint not found: {args.checkpoint}")
    if args.gallery is not None and args.classifier is None:
        raise EndofuseError("--gallery needs --classifier (the checkpoint the gallery was indexed with)")
    if args.classifier is not None and not Path(args.classifier).is_file():
        raise MissingFileError(f"--classifier: file not found: {args.classifier}")
    if not 0 < args.port < 65536:
        raise EndofuseError(f"--port {args.port} is not a valid TCP port")
    try:
        from endofuse.demo.app import build_app, launch_app  # gradio is slow to import: only when serving
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("gradio", "gradio_client"):
            raise EndofuseError(f"the demo needs {exc.name}: pip install 'endofuse[demo]'") from exc
        raise

    output_dir = Path(tempfile.mkdtemp(prefix="endofuse-demo-"))
    try:
        app = build_app(args.checkpoint, args.engine, output_dir=output_dir, classifier=args.classifier,
                        gallery=args.gallery)
        print(f"endofuse demo: http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
        launch_app(app, args.host, args.port, block=True)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return 0
