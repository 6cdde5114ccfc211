"""`endofuse demo`: serve the browser demo (Gradio) on this machine."""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from endofuse.checks import check_listen_address
from endofuse.errors import EndofuseError, MissingFileError
from endofuse.realtime.engines import BACKENDS, MODEL_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; "
                             "0.0.0.0 exposes it to the network)")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained .pt checkpoint (or exported model file); default: the bundled demo weights")
    parser.add_argument("--model", default="tiny", choices=MODEL_CHOICES,
                        help="model config for the bundled weights (default: tiny, the one with bundled weights; "
                             "small and paper need --checkpoint)")
    parser.add_argument("--engine", default="auto", choices=BACKENDS, help="inference backend (default auto)")
    parser.add_argument("--classifier", default=None,
                        help="a `train --task classify` checkpoint: enables the Classify & search tab")
    parser.add_argument("--gallery", default=None, help="an `endofuse index` folder searched by that tab")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="segment on this `endofuse serve` instead of a local engine (docs/serving.md)")
    parser.add_argument("--token", default=os.environ.get("ENDOFUSE_TOKEN"),
                        help="the server's --token (default: $ENDOFUSE_TOKEN)")


def main(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise MissingFileError(f"checkpoint not found: {args.checkpoint}")
    if args.gallery is not None and args.classifier is None:
        raise EndofuseError("--gallery needs --classifier (the checkpoint the gallery was indexed with)")
    if args.classifier is not None and not Path(args.classifier).is_file():
        raise MissingFileError(f"--classifier: file not found: {args.classifier}")
    if not 0 < args.port < 65536:
        raise EndofuseError(f"--port {args.port} is not a valid TCP port")
    check_listen_address(args.host, args.port)  # before Gradio's slow import, and in one line
    try:
        from endofuse.demo.app import build_app, launch_app  # gradio is slow to import: only when serving
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("gradio", "gradio_client"):
            raise EndofuseError(f"the demo needs {exc.name}: pip install 'endofuse[demo]'") from exc
        raise

    output_dir = Path(tempfile.mkdtemp(prefix="endofuse-demo-"))
    try:
        from functools import partial

        from endofuse.realtime.engines import open_engine

        opener = partial(open_engine, model_name=getattr(args, "model", "tiny"))  # the same --model as run/bench
        if getattr(args, "server", None):
            opener = partial(opener, server=args.server, token=args.token)
        app = build_app(args.checkpoint, args.engine, output_dir=output_dir, classifier=args.classifier,
                        gallery=args.gallery, opener=opener)
        print(f"endofuse demo: http://{args.host}:{args.port}  (Ctrl+C to stop)", flush=True)
        try:
            launch_app(app, args.host, args.port, block=True)
        except OSError as exc:  # taken between our check and Gradio's bind (or on the other IP family)
            if "empty port" not in str(exc):
                raise
            raise EndofuseError(f"--port {args.port} is already in use on {args.host}: stop the other server or "
                                "choose another --port") from None
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    return 0
