"""CHANGELOG.md's table of moved public names: each old name no longer resolves where it was (else it did not move)
and each new one resolves where the table says (else the reader is sent nowhere)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
ROW = re.compile(r"^\| `([\w.]+)` \| `([\w.]+)` \| ([0-9a-f]{7}) \|")


def resolves(dotted: str) -> bool:
    module, name = dotted.rsplit(".", 1)
    try:
        return hasattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return False


def test_every_moved_name_is_gone_from_its_old_place_and_found_at_its_new_one():
    rows = [ROW.match(line).groups() for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if ROW.match(line)]
    assert len(rows) >= 150  # the table was not lost
    stale = [old for old, _, _ in rows if resolves(old)]
    lost = [new for _, new, _ in rows if not resolves(new)]
    assert not stale and not lost, (stale, lost)
