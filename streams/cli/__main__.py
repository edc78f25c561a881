"""`python -m streams.cli`: the `gemeentebus` command."""

import sys

from streams.cli.main import main

sys.exit(main())
