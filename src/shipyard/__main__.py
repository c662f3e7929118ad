"""`python -m shipyard …`: the same command line as the `shipyard` script."""

import sys

from shipyard.cli import main

sys.exit(main())
