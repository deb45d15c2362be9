"""Outputs written so that nothing is lost: checked before any work, filled in a hidden sibling, swapped into place.

    check_output(out, "run", force=False)     # before computing: refuses at once what could not be written
    with atomic_directory(out, "run", force) as tmp:
        ...                                   # fill tmp; on success it replaces `out` in one step

A directory output is one of the toolkit's kinds (`KINDS`: run, sweep, bench, interventions,
training), recognised by the files it holds, so `force` replaces only what the toolkit wrote, never
a directory with other content. A file output (report .html, strip .png) is recognised by the
generator mark the toolkit puts in it. The replacement swaps old and new with one
`renameat2(RENAME_EXCHANGE)` where the kernel has it, so a kill at any moment leaves the old or the
new result at the path; elsewhere the old one is renamed aside to `.NAME.old` first, and the next
write of that output puts it back if a kill came between the two renames. Hidden temporary siblings
`.NAME.PID.*.tmp` left by killed writers are removed by the next successful write of the output.
No torch here: the command checks its outputs before importing anything heavy.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase as fnmatch
from pathlib import Path

GENERATOR = "scd-probes"  # the mark a toolkit-written file carries (HTML meta generator, PNG Software text)

# What each kind of output directory holds: `force` replaces a directory only if every entry is one of these.
KINDS: dict[str, tuple[str, ...]] = {
    "run": ("manifest.json", "features.safetensors", "attention.safetensors", "metrics.parquet", "video.npz"),
    "bench": ("bench.json", "bench.md", "speed.parquet", "quality.parquet"),
    "interventions": ("interventions.json", "interventions.md", "interventions.parquet", "frames.npz"),
    "training": ("train.json", "train_state.safetensors", "model.safetensors", "config.json", "loss.csv",
                 "machines.txt", "validation.csv"),
    "converted": ("convert.json", "config.json", "diffusion_pytorch_model.safetensors"),
    "emergence": ("emergence.json", "README.md", "table.md", "table.csv", "layers.md", "maps.png", "curve.png",
                  "card-*.json", "card-*.md", "maps-*.npz"),
}
MARKERS = {"run": "manifest.json", "bench": "bench.json", "interventions": "interventions.json", "training": "train.json",
           "converted": "convert.json", "emergence": "emergence.json"}
FILE_KINDS = {".html": "report", ".htm": "report", ".png": "strip"}


PLAIN_NAME = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, no '/' or '..', no extension"


def is_plain_name(text: object) -> bool:
    """Can `text` become a file name on its own (a checkpoint's, a size's) without reaching another directory?"""
    return isinstance(text, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text) is not None \
        and ".." not in text and not text.endswith((".safetensors", ".json", ".md"))


class OutputError(ValueError):
    """An output that cannot or may not be written; the message is one line naming the problem."""


def _is_shard(path: Path) -> bool:
    return path.is_dir() and re.fullmatch(r"shard-\d+-of-\d+", path.name) is not None and \
        all(p.name == "shard.json" or (p.is_dir() and is_toolkit_output(p, "run")) for p in path.iterdir())


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.endswith(".old"))


def is_toolkit_output(path: str | Path, kind: str) -> bool:
    """Was `path` written by this toolkit as a `kind` ("run", "sweep", "bench", ..., "report", "strip")?"""
    path = Path(path)
    if kind in FILE_KINDS.values():
        if not path.is_file():
            return False
        if kind == "report":
            with open(path, "rb") as f:
                return f'<meta name="generator" content="{GENERATOR}'.encode() in f.read(4096)
        try:
            from PIL import Image

            with Image.open(path) as image:
                return image.format == "PNG" and image.info.get("Software", "").startswith(GENERATOR)
        except OSError:
            return False
    if not path.is_dir() or path.is_symlink():
        return False
    entries = [p for p in path.iterdir() if not _is_temporary(p)]
    if kind == "sweep":
        return bool(entries) and all(_is_shard(p) for p in entries)
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; accepted: {', '.join([*KINDS, 'sweep', 'report', 'strip'])}")
    if not (path / MARKERS[kind]).is_file() or any(not any(fnmatch(p.name, pattern) for pattern in KINDS[kind])
                                                   or not p.is_file() for p in entries):
        return False
    try:
        json.loads((path / MARKERS[kind]).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _describe(kind: str) -> str:
    return {"run": "a run directory", "sweep": "a sweep directory", "bench": "a bench directory",
            "interventions": "an interventions directory", "training": "a training directory",
            "converted": "a converted model directory", "emergence": "an emergence directory", "report": "a report",
            "strip": "a PNG strip"}[kind]


def check_output(path: str | Path, kind: str, force: bool = False, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that exists (without `force`), that is not the toolkit's own `kind`
    (with `force`), or that cannot be written: proven by creating its hidden temporary sibling in the real
    parent (parents that do not exist yet are made and removed again). Returns the path."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"{flag} {str(path)!r} names no file or directory of its own; accepted: a path ending in a new name")
    recover(path)
    if path.is_symlink():
        raise OutputError(f"{flag} {path} is a symbolic link; accepted: a plain path (the toolkit does not write through links)")
    directory = kind not in FILE_KINDS.values()
    if path.exists():
        empty_dir = directory and path.is_dir() and not any(path.iterdir())
        if not empty_dir:
            if not force:
                raise OutputError(f"{flag} {path} already exists; pass --force to replace it, or choose another path")
            if not is_toolkit_output(path, kind):
                raise OutputError(f"{flag} {path} is not {_describe(kind)} written by this toolkit; "
                                  "--force replaces only the toolkit's own outputs, so it is left as it is")
    made: list[Path] = []
    try:
        parent = path.parent
        missing = []
        while not parent.exists():
            if parent.is_symlink():
                raise OutputError(f"{flag} {path} goes through a dangling symbolic link {parent}; accepted: a path "
                                  "through existing directories (or none)")
            missing.append(parent)
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"{flag} {path} cannot be written: {parent} is a file, not a directory")
        for p in reversed(missing):
            p.mkdir()
            made.append(p)
        probe = temporary_sibling(path, directory)
        (probe.rmdir if directory else probe.unlink)()
    except OSError as e:
        raise OutputError(f"{flag} {path} cannot be written ({e.strerror or e}); accepted: a path in a writable directory") \
            from None
    finally:
        for p in reversed(made):
            p.rmdir()
    return path


def temporary_sibling(path: Path, directory: bool = True) -> Path:
    """A new hidden `.NAME.PID.XXXX.tmp` beside `path`, with the permissions a plain mkdir or open would give
    (mkdtemp's 0700 would otherwise stay on the renamed result); the PID tells a stale one from a live one."""
    make = tempfile.mkdtemp if directory else tempfile.mkstemp
    made = make(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    if not directory:
        os.close(made[0])
        made = made[1]
    umask = os.umask(0)
    os.umask(umask)
    tmp = Path(made)
    tmp.chmod((0o777 if directory else 0o666) & ~umask)
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_siblings(path: str | Path) -> list[Path]:
    """Temporary siblings of `path` whose writer is gone (killed mid-write)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = []
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        rest = p.name.removeprefix(prefix)
        if p.name.startswith(prefix) and p.name.endswith(".tmp") and rest.split(".")[0].isdigit():
            pid = int(rest.split(".")[0])
            if pid == os.getpid() or not _alive(pid):
                stale.append(p)
    return stale


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> None:
    """Undo what a kill between the two renames of a fallback replacement left: `.NAME.old` without `NAME`."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return
    old = path.with_name(f".{path.name}.old")
    try:
        if old.exists() and not path.exists():
            old.rename(path)
        elif old.exists():
            _remove(old)
    except OSError:  # a name too long for its `.old` sibling has none
        pass


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace(tmp: Path, path: Path) -> None:
    """Put the finished `tmp` at `path`, which holds the old result or nothing: never neither, whenever killed."""
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)  # nothing to keep: one rename (a file also replaces atomically here)
    elif tmp.is_file() and path.is_file():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        _remove(tmp)  # tmp now holds the old result
    else:
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        path.rename(old)
        tmp.rename(path)  # a kill here leaves `.NAME.old`, which `recover` puts back
        _remove(old)
    for stale in stale_siblings(path):
        _remove(stale)


@contextmanager
def atomic_directory(path: str | Path, kind: str | None = None, force: bool = False) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to fill; on success it replaces `path` (see `replace`), on failure it
    is removed and `path` is untouched. With a `kind`, `path` is first checked as `check_output` does."""
    path = Path(path)
    if kind is not None:
        check_output(path, kind, force)
    recover(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()  # an empty directory (made ahead by the user) holds nothing to protect
    tmp = temporary_sibling(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling file of `path` to write; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, directory=False)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
