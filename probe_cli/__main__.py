"""`python -m probe_cli` (as torchrun launches it): the `probe` command."""

import sys

from probe_cli.cli import main

sys.exit(main())
