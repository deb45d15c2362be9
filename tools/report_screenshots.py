"""Screenshots of a report as a reader sees it: headless Chromium (Debian's package) at 1400 px, the first screen and
one screen from each section's heading (issue 46). Not part of the toolkit's API: a reviewing aid.

    python tools/report_screenshots.py reports/baseline.html /tmp/shots
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def screenshots(report: Path, out: Path, width: int = 1400, height: int = 900) -> list[Path]:
    """The first screen, then one screen from each `h2[id]` (and `h3[id]`), as PNGs in `out`."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        shots.append(out / f"{report.stem}-00-first-screen.png")
        page.screenshot(path=str(shots[-1]))
        ids = page.eval_on_selector_all("h2[id], h3[id]", "els => els.map(e => e.id)")
        for i, anchor in enumerate(ids, 1):
            page.evaluate("id => document.getElementById(id).scrollIntoView()", anchor)
            shots.append(out / f"{report.stem}-{i:02d}-{anchor}.png")
            page.screenshot(path=str(shots[-1]))
        browser.close()
    return shots


if __name__ == "__main__":
    for shot in screenshots(Path(sys.argv[1]), Path(sys.argv[2])):
        print(shot)
