"""`python -m tiered_operator.cli`: the `tiered` command without relying on PATH."""

import sys

from tiered_operator.cli import main

sys.exit(main())
