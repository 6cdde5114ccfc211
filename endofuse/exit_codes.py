"""The exit codes of ordinary endings, as a shell reports them, and the quiet Ctrl-C of a starting program.

Imports nothing heavy: `python -m endofuse` installs `quit_interrupted` before anything else is imported.
"""
import os

SIGINT_EXIT = 130  # 128 + SIGINT: stopped by Ctrl-C
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: the reader of stdout went away (`| head -1`)


def quit_interrupted(signum, frame) -> None:
    """SIGINT handler while modules import or the interpreter shuts down: one line and 130, at once.

    Nothing of the command's is in flight then, and a KeyboardInterrupt raised inside an import would print
    a traceback from deep inside torch.
    """
    os.write(2, b"endofuse: interrupted\n")
    os._exit(SIGINT_EXIT)
