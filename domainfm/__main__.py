"""``python -m domainfm`` runs the console script."""

import sys

from domainfm.cli import main

sys.exit(main())
