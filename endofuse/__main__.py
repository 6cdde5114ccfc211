import sys

from endofuse.cli import main

sys.exit(main())
