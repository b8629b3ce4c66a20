"""``python -m mupso_lite``: the command line of ``mupso_lite.cli``."""
import sys

from .cli import main

sys.exit(main())
