"""The `endofuse` command line: one entry point, one subcommand per job.

Each subcommand lives in its own module (`<package>/<name>_command.py`) that
exposes `add_arguments(parser)` and `main(args) -> int`. Modules are imported
only for the subcommand being run, so `endofuse --help` starts instantly and a
broken optional dependency of one subcommand never breaks the others.
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
import threading
from dataclasses import dataclass

from endofuse import __version__
from endofuse.checks import check_thread_options
from endofuse.errors import EndofuseError
from endofuse.exit_codes import SIGINT_EXIT, SIGPIPE_EXIT, quit_interrupted
from endofuse.outputs import remove_unused_folders_on_error


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str
    summary: str


SUBCOMMANDS = [
    Subcommand("synth", "endofuse.train.synth_command", "generate a synthetic WLI/NBI dataset or video pair"),
    Subcommand("train", "endofuse.train.train_command", "train on a dataset folder in the reference CSV format"),
    Subcommand("evaluate", "endofuse.evaluate_command", "score a checkpoint on a dataset folder or a video"),
    Subcommand("index", "endofuse.train.index_command", "embed a classification folder into a search gallery"),
    Subcommand("search", "endofuse.train.search_command", "find gallery images like a query image or text"),
    Subcommand("convert-reference", "endofuse.model.convert_command", "convert a reference MM-EndoCL checkpoint"),
    Subcommand("export", "endofuse.realtime.engines.export_command",
               "export to ONNX / INT8 / TensorRT / Triton server"),
    Subcommand("run", "endofuse.realtime.commands.run", "segment a live or recorded WLI/NBI pair with overlay"),
    Subcommand("dicom", "endofuse.realtime.commands.dicom", "export a case folder as DICOM, store it into a PACS"),
    Subcommand("bench", "endofuse.realtime.commands.bench", "measure engine and pipeline latency"),
    Subcommand("demo", "endofuse.demo.demo_command", "serve the browser demo"),
    Subcommand("serve", "endofuse.realtime.serve.command", "serve the model to many rooms on Ray Serve"),
]

EXAMPLES = """\
examples:
  endofuse synth data/synthetic --pairs 64
  endofuse train --data data/synthetic --model tiny --epochs 20 --out runs/tiny
  endofuse evaluate --data data/synthetic --checkpoint runs/tiny/best.pt --out eval/
  endofuse export --checkpoint runs/tiny/best.pt --format onnx --out tiny.onnx
  endofuse run --wli synthetic --nbi synthetic --out overlay.mp4 --report report.json
  endofuse run --endoscope rec.mp4 --case case/ && endofuse dicom case/ --out dicom/ --send pacs:104
  endofuse bench --model tiny --engine onnxruntime --frames 600
  endofuse demo --port 7860
  endofuse serve --replicas 1 --max-batch 8
  endofuse run --wli 0 --nbi 1 --server http://127.0.0.1:8000 --fallback local

Set ENDOFUSE_DEBUG=1 to see full tracebacks instead of one-line errors.
"""


def _first_positional(argv: list[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
        if token in ("-h", "--help", "--version"):
            return None
    return None


def build_parser(selected: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="endofuse",
        description="Real-time WLI/NBI fusion segmentation of laryngo-pharyngeal tumours.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"endofuse {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    modules = {}
    for sub in SUBCOMMANDS:
        sp = subparsers.add_parser(sub.name, help=sub.summary, description=sub.summary)
        if sub.name == selected:
            module = importlib.import_module(sub.module)
            module.add_arguments(sp)
            modules[sub.name] = module
    return parser, modules


def _stdout_closed() -> int:
    """Stop quietly: point stdout at /dev/null so Python's final flush cannot fail a second time."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout already gone or not a file
        pass
    return SIGPIPE_EXIT


def _exit_interrupted() -> None:
    """End a program stopped by Ctrl-C with 130, after what a normal exit does (threads, exit handlers, streams).

    The command has already finalised or removed its files. Ending here rather than returning: CPython can end
    a process by SIGINT after finalising when a KeyboardInterrupt passed through code a C extension ran via the C
    API, even though it was handled here (seen once as exit -2 after `endofuse train: interrupted`).
    """
    signal.signal(signal.SIGINT, quit_interrupted)  # a second Ctrl-C while exiting: one line, 130
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(SIGINT_EXIT)


def main(argv: list[str] | None = None) -> int:
    """The `endofuse` program (argv None: the process's own arguments, signals handled as a program's)."""
    as_program = argv is None and threading.current_thread() is threading.main_thread()
    if as_program:  # before the command's modules import (seconds for torch)
        signal.signal(signal.SIGINT, quit_interrupted)
    command = None
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        selected = _first_positional(argv)
        known = {s.name for s in SUBCOMMANDS}
        parser, modules = build_parser(selected if selected in known else None)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        command = args.command
        if as_program:  # the command runs with Ctrl-C as KeyboardInterrupt: its files are finalised or removed
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with remove_unused_folders_on_error():  # a refused command leaves no empty --out behind
            check_thread_options(args)  # before any engine or thread pool starts
            return int(modules[args.command].main(args) or 0)
    except KeyboardInterrupt:
        print(f"endofuse{' ' + command if command else ''}: interrupted", file=sys.stderr)
        if as_program:
            _exit_interrupted()
        return SIGINT_EXIT
    except BrokenPipeError:
        return _stdout_closed()
    except EndofuseError as exc:  # a user error: one line; anything else is a bug and keeps its traceback
        if os.environ.get("ENDOFUSE_DEBUG"):
            raise
        print(f"endofuse {command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    finally:
        if as_program:  # the interpreter's shutdown (threads joined, files closed) ends quietly too
            signal.signal(signal.SIGINT, quit_interrupted)


if __name__ == "__main__":
    sys.exit(main())
