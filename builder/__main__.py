"""`python -m builder`: the same as the `repro` command."""

import sys

from builder.cli import main

sys.exit(main())
