"""`python -m reswise` (and `torchrun -m reswise`) runs the CLI."""

import sys

from .cli import main

sys.exit(main())
