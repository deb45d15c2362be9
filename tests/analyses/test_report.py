"""`probe report`: the HTML opened in headless Chromium (no console error, no network, escaped strings), and bad input."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from probe_cli import main
from probes import Probe
from scd.data import VideoBenchmark
from scd.sampling import generate
from tests.analyses.test_report_layout import layout_problems

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two small probe runs of the random tiny model, one named like a script."""
    import torch

    from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
    from tests.conftest import randomize

    torch.set_num_threads(1)
    model = randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]))
    clip = VideoBenchmark("val", frames=5, size=16).clip(0)
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for name, mode in ((EVIL, "full"), ("tiny-stream", "stream")):
        with Probe(model, "all", mode=mode, pca_tokens=12) as probe:
            generate(model, clip[:3], 2, steps=4)
        paths.append(probe.save(root / mode, ground_truth=clip, model=name, seed=0, clip=0, split="val"))
    return paths


def _chromium() -> str:
    """Debian's chromium; installed here when missing and possible, else the test is skipped with the reason."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True, timeout=600)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("headless Chromium is not installed and could not be installed (needs Debian's chromium package)")
    return found


def test_the_report_opens_offline_in_headless_chromium(runs, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    out = tmp_path / "report.html"
    assert main(["report", *map(str, runs), "-o", str(out)]) == 0
    html = out.read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert layout_problems(html) == []
    errors, requests, dialogs = [], [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(out.as_uri())
        page.wait_for_load_state("load")
        sources = page.eval_on_selector_all("img", "els => els.map(e => e.src)")
        scripts = page.evaluate("document.scripts.length")
        natural = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        text = page.inner_text("body")
        page.screenshot(path=str(tmp_path / "shot.png"))
        browser.close()
    assert errors == [] and dialogs == [] and scripts == 0
    assert [url for url in requests if not url.startswith("data:") and url != out.as_uri()] == []
    assert len(sources) >= 8 and all(src.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for src in sources)
    assert sum(src.startswith("data:image/gif;base64,") for src in sources) == len(runs)  # one playing video per run
    assert all(width > 0 for width in natural)  # every image decoded
    assert EVIL in text and "Claims" in text and "not measured" in text  # 4 steps: the 50-step claim is not measured
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=float)
    assert shot.std() > 10 and len(np.unique(shot)) > 50  # not blank


def test_report_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys):
    def error():
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    assert "is not a run directory" in error()
    incomplete = tmp_path / "incomplete"
    shutil.copytree(runs[1], incomplete)
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert main(["report", str(incomplete), "-o", str(tmp_path / "r.html")]) == 2
    assert "incomplete run" in error()
    (tmp_path / "file").write_text("x")
    assert main(["report", str(runs[1]), "-o", str(tmp_path / "file" / "r.html")]) == 2
    assert "cannot be written" in error()
    assert main(["report", str(runs[1]), "-o", str(tmp_path / "r.pdf")]) == 2
    assert "is not an .html file; accepted: a path ending in .html" in error()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "incomplete"]  # nothing written


def test_the_reliance_table_is_the_loss_against_the_truth_per_layer():
    """Constructed: knocking out layer 2 alone costs 1 dB on every clip, layers 3.. cost 0: the table says so."""
    import pandas as pd

    from analyses.report import _reliance

    rows = []
    for clip in range(3):
        rows.append({"intervention": "none", "layer": -1, "clip": clip, "psnr": 20.0 + clip, "ssim": 0.7})
        rows.append({"intervention": "knockout-layer", "layer": 2, "clip": clip, "psnr": 19.0 + clip, "ssim": 0.6})
        rows.append({"intervention": "knockout", "layer": 3, "clip": clip, "psnr": 20.0 + clip, "ssim": 0.7})
    table = _reliance({"table": pd.DataFrame(rows)})
    assert table == [{"layer": 2, "alone": "1.00 [1.00, 1.00] dB, SSIM 0.100 [0.100, 0.100]", "from": "not measured"},
                     {"layer": 3, "alone": "not measured", "from": "0.00 [0.00, 0.00] dB, SSIM 0.000 [0.000, 0.000]"}]
