"""`python -m cross ...`: the same as the `cross` console script."""

import sys

from .cli.main import main

sys.exit(main())
