import hashlib
import os
from pathlib import Path

import pytest
import torch

from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.models.scd_model import SCD_SIZES, SeparableCausalDiffuser


@pytest.fixture(autouse=True)
def _pinned_threads():
    """Pin threads and seeds so the fast tests are quick and repeatable on a 2-core machine."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


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
