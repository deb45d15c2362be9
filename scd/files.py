"""Outputs written so that nothing is lost: checked before any work, filled in a marked hidden sibling, swapped in.

    check_output(out, "run", force=False)     # before computing: refuses at once what could not be written
    with atomic_directory(out, "run", force) as tmp:
        ...                                   # fill tmp; on success it replaces `out` in one step

Ownership is proven by content, never by names alone. A directory output is one of the toolkit's kinds
(`KINDS`: run, sweep, bench, interventions, training, ...): its marker file carries the toolkit's format or
generator field and every entry is one the kind holds, so `force` replaces only what the toolkit wrote. A
file output (report .html, strip .png) carries the generator mark. A temporary is a hidden wrapper
`.NAME.PID.XXXX.tmp` whose first file is a signature (generator, PID, host, target); only signed wrappers of
writers that are gone are ever removed or restored, so a user's look-alike file is never touched. The
replacement swaps old and new with one `renameat2(RENAME_EXCHANGE)` where the kernel has it, so a kill at any
moment leaves the old or the new result at the path; elsewhere the old one goes aside into the signed wrapper
first, and the next write of that output puts it back if a kill came between the two renames (readers find
it there meanwhile, `readable`, without moving anything). A failure while filling (an exception, a full disk)
removes the temporary and leaves the path as it was. No torch here: the command checks its outputs before
importing anything heavy.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
                  "card-*.json", "card-*.md", "maps-*.npz", "runs.md", "two_by_two.md", "family.md", "over_training.csv",
                  "effects.png"),
}
MARKERS = {"run": "manifest.json", "bench": "bench.json", "interventions": "interventions.json", "training": "train.json",
           "converted": "convert.json", "emergence": "emergence.json"}
FILE_KINDS = {".html": "report", ".htm": "report", ".png": "strip", ".json": "plan"}


FAULTS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ENOMEM)  # errors of the machine, not of a path


PLAIN_NAME = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, no '/' or '..', no extension"


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_path(path: object, what: str, accepted: str, error: type[ValueError] = ValueError) -> Path:
    """`path` as a Path if it can name a file at all (a str or PathLike, not empty, no control character, each name
    short enough to look up); `error` (a toolkit ValueError subclass) naming `what` and `accepted` otherwise. Whether it
    exists is the caller's to say."""
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise error(f"{what} {path!r} is not a path; accepted: {accepted}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text or not text.isprintable():  # control characters, line separators
        raise error(f"{what} {text!r} is not a usable path (empty, or with a control character such as a NUL byte or a "
                    f"line break); accepted: {accepted}")
    try:
        os.stat(text)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES):
            raise error(f"{what} {text[:60]!r} cannot be looked up ({e.strerror}); accepted: {accepted}") from None
    return Path(text)


def is_plain_name(text: object) -> bool:
    """Can `text` become a file name on its own (a checkpoint's, a size's) without reaching another directory?"""
    return isinstance(text, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", text) is not None \
        and ".." not in text and not text.endswith((".safetensors", ".json", ".md"))


class OutputError(ValueError):
    """An output that cannot or may not be written; the message is one line naming the problem."""


def _is_shard(path: Path) -> bool:
    if not (path.is_dir() and not path.is_symlink() and re.fullmatch(r"shard-\d+-of-\d+", path.name)):
        return False
    shard = _json(path / "shard.json")
    return isinstance(shard, dict) and str(shard.get("format", "")).startswith("scd-probes-shard/") and \
        all(p.name == "shard.json" or (p.is_dir() and is_toolkit_output(p, "run")) for p in path.iterdir())


def _json(path: Path) -> object:
    """The parsed JSON file at `path`, or None where there is none or it is not JSON (never raises)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 << 20:
            return None
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


# What a kind's marker file holds when the toolkit wrote it: its `generator` field (written since the ownership
# rule), or, for outputs written before it, the fields only the toolkit's writer puts there together.
_LEGACY_FIELDS = {
    "bench": {"baseline", "other", "command", "machine", "clips"},
    "interventions": {"model", "checkpoint", "depth", "command", "machine"},
    "training": {"family", "steps", "batch_size", "lr", "warmup", "ema_decay", "seed", "frames"},
    "converted": {"source", "source_sha256", "family", "config"},
    "emergence": {"reference", "cards", "regenerate"},
}


def _signed(kind: str, marker: object) -> bool:
    """Does the parsed marker file say the toolkit wrote it as a `kind`?"""
    if not isinstance(marker, dict):
        return False
    if kind == "run":
        return str(marker.get("format", "")).startswith("scd-probes-run/")
    return marker.get("generator") == f"{GENERATOR}/{kind}" or _LEGACY_FIELDS[kind] <= set(marker)


def signature(kind: str) -> dict:
    """The field a toolkit-written marker file of `kind` carries, so that `force` can tell it from a user's."""
    return {"generator": f"{GENERATOR}/{kind}"}


def is_toolkit_output(path: str | Path, kind: str) -> bool:
    """Was `path` written by this toolkit as a `kind` ("run", "sweep", "bench", ..., "report", "strip")?

    Recognised by content, never by names alone: a directory's marker file must carry the toolkit's format or
    generator field and every entry must be one the kind holds; a file must carry the generator mark."""
    path = Path(path)
    if kind in FILE_KINDS.values():
        if not path.is_file() or path.is_symlink():
            return False
        if kind == "report":
            with open(path, "rb") as f:
                return f'<meta name="generator" content="{GENERATOR}'.encode() in f.read(4096)
        if kind == "plan":  # a caching plan (analyses.plan): a JSON object carrying the generator field
            try:
                content = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return False
            return isinstance(content, dict) and content.get("generator") == f"{GENERATOR}/plan"
        try:
            from PIL import Image

            with Image.open(path) as image:
                return image.format == "PNG" and image.info.get("Software", "").startswith(GENERATOR)
        except (OSError, ValueError):
            return False
    if not path.is_dir() or path.is_symlink():
        return False
    if kind == "sweep":  # every entry a shard: stops at the first that is not (an ancestor like /tmp costs one look)
        found = False
        for p in path.iterdir():
            if _owned_temporary(p):
                continue
            if not _is_shard(p):
                return False
            found = True
        return found
    if kind not in KINDS:
        raise OutputError(f"unknown output kind {kind!r}; accepted: {', '.join([*KINDS, 'sweep', 'report', 'strip'])}")
    entries = [p for p in path.iterdir() if not _owned_temporary(p)]
    if any(not any(fnmatch(p.name, pattern) for pattern in KINDS[kind]) or not p.is_file() or p.is_symlink()
           for p in entries if not (kind == "training" and p.name == "snapshots")):
        return False
    return _signed(kind, _json(path / MARKERS[kind]))


def toolkit_kind(path: str | Path) -> str | None:
    """The kind of toolkit output directory `path` is, or None."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    for kind, marker in MARKERS.items():
        if (path / marker).is_file() and is_toolkit_output(path, kind):
            return kind
    return "sweep" if is_toolkit_output(path, "sweep") else None


def _describe(kind: str) -> str:
    return {"run": "a run directory", "sweep": "a sweep directory", "bench": "a bench directory",
            "interventions": "an interventions directory", "training": "a training directory",
            "converted": "a converted model directory", "emergence": "an emergence directory", "report": "a report",
            "plan": "a caching plan",
            "strip": "a PNG strip"}[kind]


def _inside_output(path: Path) -> Path | None:
    """The toolkit output directory that `path` would be written into, if any (a report inside a run would make
    that run unrecognisable, and the next `--force` of it would refuse to replace it). Inside one of the toolkit's
    own temporaries (a sweep's shard being filled), writing is the toolkit's: nothing above it is asked."""
    for parent in path.absolute().parents:
        try:
            if _owned_temporary(parent):
                return None
            if toolkit_kind(parent) is not None:
                return parent
        except OSError:  # an ancestor this user may not list holds no output of this user's
            continue
    return None


def inside_output(path: str | Path) -> Path | None:
    """The toolkit output directory (a run, a sweep, ...) that `path` lies inside, if any."""
    return _inside_output(Path(path))


def check_output(path: str | Path, kind: str, force: bool = False, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that exists (without `force`), that is not the toolkit's own `kind`
    (with `force`), that lies inside another of the toolkit's outputs, or that cannot be written: proven by
    creating its marked temporary sibling in the real parent and removing it again (parents that do not exist
    yet are made and removed again). Reads only otherwise: nothing of anyone's is moved or removed. Returns the
    path. `flag` names the path in a refusal: a command's flag, or the name of a Python argument ("out": "pass force=True")."""
    path = input_path(path, flag, "a path ending in a new name", OutputError)
    force_text = "--force" if flag.startswith("-") else "force=True"  # a command's flag, or a Python argument
    if path.name in ("", ".", ".."):
        raise OutputError(f"{flag} {str(path)!r} names no file or directory of its own; accepted: a path ending in a new name")
    if path.is_symlink():
        raise OutputError(f"{flag} {path} is a symbolic link; accepted: a plain path (the toolkit does not write through links)")
    directory = kind not in FILE_KINDS.values()
    exists = path.exists() or _aside(path) is not None  # a killed replacement's old result counts as there
    if exists:
        empty_dir = directory and path.is_dir() and not any(path.iterdir())
        if not empty_dir:
            if not force:
                raise OutputError(f"{flag} {path} already exists; pass {force_text} to replace it, or choose another path")
            if path.exists() and not is_toolkit_output(path, kind):
                raise OutputError(f"{flag} {path} is not {_describe(kind)} written by this toolkit; "
                                  f"{force_text} replaces only the toolkit's own outputs, so it is left as it is")
    inside = _inside_output(path)
    if inside is not None:
        raise OutputError(f"{flag} {path} lies inside {inside}, an output of this toolkit; accepted: a path outside "
                          "the toolkit's run, sweep, bench and training directories")
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
        discard(temporary_sibling(path, directory))
    except OSError as e:
        if e.errno in FAULTS:
            raise  # the machine's fault (a full disk, an I/O error), not the path's: the command's fault code
        raise OutputError(f"{flag} {path} cannot be written ({e.strerror or e}); accepted: a path in a writable directory") \
            from None
    finally:
        for p in reversed(made):
            p.rmdir()
    return path


@dataclass(frozen=True)
class CheckedOutput:
    """An output path that `check_output` accepted for `kind` (with `force`): the toolkit's writers take it in place of
    a path and trust it, so a command's output is proven writable once, at its door."""
    path: Path
    kind: str
    force: bool


def checked_output(path: str | Path | CheckedOutput, kind: str, force: bool = False, flag: str = "--out",
                   error: type[ValueError] = OutputError) -> CheckedOutput:
    """`path` checked by `check_output` (its refusal raised as `error`), or a CheckedOutput for `kind` trusted."""
    if isinstance(path, CheckedOutput):
        assert path.kind == kind, (path.kind, kind)  # a writer is handed the kind it writes
        return path
    try:
        return CheckedOutput(check_output(path, kind, force, flag), kind, force)
    except OutputError as e:
        if error is OutputError:
            raise
        raise error(str(e)) from None


# Temporaries. Each is a hidden wrapper directory `.NAME.PID.XXXX.tmp` beside the output, holding first a
# signature file (generator, PID, host, target name) and then the payload `NAME` (the directory or file being
# written) and, during a fallback replacement, the old result as `OLD`. The toolkit removes or restores only
# wrappers that carry a valid signature naming this host, their own PID and target, and a writer that is gone:
# a user's file or directory that merely looks like one is never touched.
SIGNATURE = ".scd-probes-writer.json"
OLD = ".scd-probes-old"
_LIVE: set[Path] = set()  # this process's wrappers still being written


def temporary_sibling(path: str | Path, directory: bool = True) -> Path:
    """A new payload path to fill, inside a marked hidden wrapper beside `path`: an empty directory (or empty
    file), with the permissions a plain mkdir or open would give. `replace(payload, path)` puts it in place;
    `discard(payload)` removes it with its wrapper."""
    path = Path(path)
    wrapper = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    _LIVE.add(wrapper)
    try:
        (wrapper / SIGNATURE).write_text(json.dumps({"generator": GENERATOR, "pid": os.getpid(),
                                                     "host": socket.gethostname(), "target": path.name}) + "\n")
        payload = wrapper / path.name
        payload.mkdir() if directory else payload.touch()
    except BaseException:
        _remove(wrapper)
        _LIVE.discard(wrapper)
        raise
    return payload


def _wrapper_of(payload: Path) -> Path:
    wrapper = payload.parent
    if wrapper not in _LIVE or payload.name != wrapper.name[1:].rsplit(".", 3)[0]:
        raise OutputError(f"{payload} is not a temporary made by temporary_sibling in this process")
    return wrapper


def discard(payload: str | Path) -> None:
    """Remove a temporary made by `temporary_sibling` in this process (with its wrapper), if it is still there;
    nothing else."""
    if Path(payload).parent not in _LIVE:
        return  # already put in place or discarded
    wrapper = _wrapper_of(Path(payload))
    _remove(wrapper)
    _LIVE.discard(wrapper)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _signature(entry: Path, target: str | None = None) -> dict | None:
    """The signature of `entry` if it is a wrapper the toolkit made (for `target`, if given), else None: proven by
    the signature file, not by the name."""
    match = re.fullmatch(r"\.(.+)\.(\d{1,10})\.[^./]+\.tmp", entry.name)
    if match is None or not entry.is_dir() or entry.is_symlink() or (target is not None and match[1] != target):
        return None
    signed = _json(entry / SIGNATURE)
    ok = isinstance(signed, dict) and signed.get("generator") == GENERATOR and signed.get("pid") == int(match[2]) \
        and signed.get("target") == match[1] and isinstance(signed.get("host"), str) and \
        all(p.name in (SIGNATURE, OLD, match[1]) for p in entry.iterdir())
    return signed if ok else None


def _owned_temporary(entry: Path) -> bool:
    """Is `entry` a wrapper the toolkit made?"""
    return _signature(entry) is not None


def stale_siblings(path: str | Path) -> list[Path]:
    """The toolkit's temporary wrappers beside `path` whose writer is gone (killed mid-write), on this host."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = []
    for p in sorted(path.parent.iterdir()):
        signed = _signature(p, path.name) if p.name.startswith(f".{path.name}.") and p not in _LIVE else None
        if signed and signed["host"] == socket.gethostname() and (signed["pid"] == os.getpid() or not _alive(signed["pid"])):
            stale.append(p)
    return stale


def _aside(path: Path) -> Path | None:
    """The old result a replacement killed between its two renames left in its wrapper, if `path` is missing."""
    if path.exists() or path.is_symlink():
        return None
    for wrapper in stale_siblings(path):
        if (wrapper / OLD).exists():
            return wrapper / OLD
    return None


def readable(path: str | Path) -> Path:
    """Where to read the output `path` from, without changing anything: `path`, or, where a replacement was killed
    between its two renames, the old result still aside in the killed writer's wrapper."""
    path = Path(path)
    return _aside(path) or path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def recover(path: str | Path) -> None:
    """Before writing `path`: put back an old result a kill between the two renames of a fallback replacement left
    aside, and remove the toolkit's stale wrappers of `path`. Touches only signed wrappers of dead writers."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        return
    old = _aside(path)
    if old is not None:
        old.rename(path)
    for stale in stale_siblings(path):
        _remove(stale)


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


def replace(payload: Path, path: Path) -> None:
    """Put the finished `payload` (from `temporary_sibling(path)`) at `path`, which holds the old result or nothing:
    never neither, whenever killed. Its wrapper is removed, and so are the stale wrappers of killed writers (by
    `recover`, first)."""
    payload, path = Path(payload), Path(path)
    wrapper = _wrapper_of(payload)
    recover(path)
    if not path.exists() and not path.is_symlink():
        os.replace(payload, path)  # nothing to keep: one rename
    elif payload.is_file() and path.is_file() and not path.is_symlink():
        os.replace(payload, path)  # a file replaces atomically
    elif not _exchange(payload, path):  # no renameat2: the old result goes aside into the signed wrapper first
        path.rename(wrapper / OLD)
        payload.rename(path)  # a kill here leaves the old result in the wrapper, which `recover` puts back
    discard(payload)  # the wrapper, holding the old result after an exchange or a fallback


@contextmanager
def atomic_directory(path: str | Path, kind: str | None = None, force: bool = False) -> Iterator[Path]:
    """Yields a temporary directory to fill; on success it replaces `path` (see `replace`), on failure (an
    exception, a full disk) it is removed and `path` is untouched. With a `kind`, `path` is first checked as
    `check_output` does."""
    path = Path(path)
    if kind is not None:
        check_output(path, kind, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()  # an empty directory (made ahead by the user) holds nothing to protect
    payload = temporary_sibling(path)
    try:
        yield payload
        replace(payload, path)
    finally:
        discard(payload)


@contextmanager
def atomic_file(path: str | Path, new: bool = False) -> Iterator[Path]:
    """Yields a temporary file to write; on success it replaces `path` in one rename, on failure it is removed. With
    `new` (an output asked for without --force), it is put at `path` only if nothing is there by then (a hard link,
    which no other writer can race): a second writer of the same output, started before the first finished, gets an
    OutputError instead of replacing the first's result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = temporary_sibling(path, directory=False)
    try:
        yield payload
        if new:
            try:
                os.link(payload, path)
            except FileExistsError:
                raise OutputError(f"{path} was written by another process while this one worked; accepted: --force to "
                                  "replace it, or another path") from None
        else:
            replace(payload, path)
    finally:
        discard(payload)
