"""``python -m kvviz``: see ``kvviz/cli.py``."""

import sys

from kvviz.cli import main

sys.exit(main())
