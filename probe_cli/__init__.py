"""The `probe` command, above the three packages (scd <- probes <- analyses <- probe_cli): it parses flags,
refuses bad input with one line and exit code 2, and calls the packages' Python API.

    cli.py        the parser and the entry point (imports nothing heavy: `probe --help` answers at once)
    checks.py     parsers and checks of flags, each naming its accepted values
    probing.py    probe run, show, report
    measuring.py  probe bench, intervene
    making.py     probe generate, train, export
"""

from probe_cli.cli import main

__all__ = ["main"]
