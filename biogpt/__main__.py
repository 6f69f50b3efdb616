"""`python -m biogpt ...` runs the `biogpt` command (see `biogpt.cli`)."""

import sys

from .cli import main

sys.exit(main())
