"""``python -m yoda`` = the ``yoda`` command (needed by ``torchrun -m yoda``)."""

import sys

from .cli import main

sys.exit(main())
