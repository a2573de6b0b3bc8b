"""``python -m model``: the model's command line (see :mod:`model.cli`)."""

import sys

from model.cli import main

sys.exit(main())
