import hashlib
import os
from pathlib import Path

import pytest
import torch

from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.models.scd_model import SCD_SIZES, SeparableCausalDiffuser

RSS_LIMIT = 2 * 2**30  # the suite's budget per test: 2 GiB resident


def _status_bytes(field: str) -> int | None:
    """A /proc/self/status field in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@pytest.fixture(autouse=True)
def _pinned_threads(request):
    """Pin threads and seeds so the fast tests are quick and repeatable on a 2-core machine; record the test's peak
    resident memory in its process (VmHWM, reset before it runs; subprocesses it starts are not in it)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current resident set
    except OSError:
        pass
    yield
    peak = _status_bytes("VmHWM")
    if peak is not None:
        request.node.user_properties.append(("peak_rss", peak))


_PEAKS: list[tuple[int, str]] = []


def pytest_runtest_logreport(report):
    """Collect each test's peak resident memory (the xdist controller receives the workers' reports)."""
    if report.when == "teardown":  # the fixture records the peak as the test is torn down
        peak = dict(report.user_properties).get("peak_rss")
        if peak is not None:
            _PEAKS.append((peak, report.nodeid))


def pytest_terminal_summary(terminalreporter):
    """The ten largest peaks of resident memory, beside pytest's ten slowest tests (the budget: 2 GiB a test)."""
    if not _PEAKS:
        return
    terminalreporter.section("largest peak resident memory (in the test's process)")
    for peak, nodeid in sorted(_PEAKS, reverse=True)[:10]:
        flag = "  OVER 2 GiB" if peak > RSS_LIMIT else ""
        terminalreporter.write_line(f"{peak / 2**30:6.2f} GiB  {nodeid}{flag}")


def randomize(model: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Draw every weight at random: zero-initialised adaLN gates would make every block the identity
    and hide the wiring that the tests check."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Checkpoint directories (baseline, SCD) of the `tiny` models with random weights."""
    from scd.zoo import save_model

    root = tmp_path_factory.mktemp("tiny")
    save_model(randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"])), root / "base" / "model.safetensors")
    save_model(randomize(SeparableCausalDiffuser(SCD_SIZES["tiny"])), root / "scd" / "model.safetensors")
    return root / "base", root / "scd"


@pytest.fixture
def tiny_model() -> CausalVideoDiffuser:
    """The `tiny` baseline (16x16 frames, 4 blocks) with random weights."""
    return randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]))


@pytest.fixture
def tiny_scd() -> SeparableCausalDiffuser:
    """The `tiny` SCD (16x16 frames, 3 encoder + 2 decoder blocks) with random weights."""
    return randomize(SeparableCausalDiffuser(SCD_SIZES["tiny"]))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason shown, where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def file_tree(root: Path, contents: bool = True) -> dict:
    """Every entry under `root`: kind, mode, and for a file the sha256 of its bytes (`contents`), or else its size,
    modification time (ns) and inode: a stat fingerprint that any write, truncation or replacement changes, for
    trees a case can only touch by accident (the shipped weights: 57 MB that no refusal reads twice)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                found[rel] = ("dir", p.stat().st_mode)
            else:
                stat = p.stat()
                seal = hashlib.sha256(p.read_bytes()).hexdigest() if contents else (stat.st_size, stat.st_mtime_ns,
                                                                                   stat.st_ino)
                found[rel] = ("file", seal, stat.st_mode)
    return found
