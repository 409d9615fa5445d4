"""`python -m shared.cli`: the `nexus` command."""

import sys

from shared.cli.main import main

sys.exit(main())
