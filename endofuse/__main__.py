import signal
import sys

from endofuse.exit_codes import quit_interrupted

signal.signal(signal.SIGINT, quit_interrupted)  # first: Ctrl-C while endofuse.cli imports ends quietly too

from endofuse.cli import main  # noqa: E402

sys.exit(main())
