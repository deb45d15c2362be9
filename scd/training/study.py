"""The emergence study's training plan: its conditions, each trained from several seeds, one factor at a time.

Every condition is the reference's training settings with one factor changed (`CONDITIONS`), and every
run of the study is a condition and a seed: `study_config("textured", 1)`. Everything but the factor and
the seed is the same in every run (steps, schedule, precision, batch, data order), so a difference
between conditions is the factor's, and the spread between seeds of one condition is the floor a
factor's effect must clear (`analyses.emergence`). Where a run went (the machine, its torch threads: the
plan's one, or more where a run must end within a session) changes the order of floating-point sums, and
so the run's trajectory as a seed's noise would, not its settings; each card records it.

Runs are trained in sittings of `SITTING` steps (`probe study train`), each ended by a resumable
checkpoint, so a run stopped by the end of a session loses at most one sitting; several workers share
the plan through lock files, one run each at a time. Torch-free: the command builds its plan from here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from scd.files import OutputError, check_output, input_path, inside_output, signature
from scd.training.config import TrainConfig, TrainConfigError

STUDY_STEPS = 3000  # causal training steps of every run (sized by the pilot in reports/emergence/README.md)
SNAPSHOT_EVERY = 250  # raw weights kept every n steps: the "over training" measures
SITTING = 250  # steps per sitting: a resumable checkpoint at least this often
SEEDS = (0, 1, 2)  # training seeds per condition (init, batch noise)

# The reference's settings: the `study` size (scd.models.baseline.BASELINE_SIZES: width 128, 8 blocks, 64 tokens per
# frame), float32, one thread, the default AdamW recipe at 2x the shipped baseline's lr with a 100-step warm-up.
REFERENCE = dict(family="baseline", size="study", steps=STUDY_STEPS, batch_size=8, frames=8, lr=2e-3, warmup=100,
                 min_lr_ratio=0.1, bf16=False, threads=1, checkpoint_every=SITTING, snapshot_every=SNAPSHOT_EVERY,
                 clean_context_ratio=0.5, scene="sprites")

# condition -> (the factor in words, the settings it changes). Bidirectional: Wan-style bidirectional pretraining
# (half the reference's steps) then exactly the reference's causal run (same steps, its own warm-up and decay).
CONDITIONS: dict[str, tuple[str, dict]] = {
    "reference": ("(the reference)", {}),
    "textured": ("training data: the textured scene (every pixel moves) instead of flat sprites",
                 {"scene": "textured"}),
    "clean-context-10": ("the paper's 10% clean context instead of 50%", {"clean_context_ratio": 0.1}),
    "bidirectional": ("bidirectional pretraining (1500 steps), then the reference's causal training",
                      {"bidirectional_steps": STUDY_STEPS // 2, "steps": STUDY_STEPS + STUDY_STEPS // 2,
                       "restart_schedule": True}),
    "tokens-256": ("256 tokens per frame (2x2 patches, a 16x16 grid) instead of 64", {"size": "study-p2"}),
}
# The combination: the single factors `analyses.emergence.combination_choice` names once every candidate has its
# seeds (the rule, STUDY_COMBINED_FACTORS, was fixed before the runs). Set 2026-12-03 from the committed cards, when
# bidirectional-s2's card completed every candidate's three seeds (tests/test_project.py reads the choice from them
# again).
COMBINED: tuple[str, ...] = ("textured", "clean-context-10")
# The single factors the combination is chosen from. Amended 2026-12-02 (the rule first took every single factor):
# tokens-256 costs ~17 h a run on one thread, ~8 h on two (20 s / 10 s a step measured on a 2-core AMD EPYC); no
# 3-hour session here holds one and checkpoints do not survive between sessions, so under the first rule the
# combination could never be chosen. The amendment is about compute, not a result, but results of other factors were
# on record (reference 3 seeds, textured and clean-context-10 2, bidirectional 1), so the rule is labelled post hoc
# (analyses/thresholds.py). Seen later (2026-12-02): a session's runs/ was there in the next session, so a run can go
# on across sessions; tokens-256's three seeds would still take ~25 h on two threads, left to whoever has the compute.
COMBINATION_CANDIDATES = ("textured", "clean-context-10", "bidirectional")


def combined(names: tuple[str, ...]) -> tuple[str, dict]:
    """The combination condition of single factors: their settings together (refused if two set one setting apart)."""
    settings: dict = {}
    for name in names:
        for key, value in CONDITIONS[name][1].items():
            if key in settings and settings[key] != value:
                raise TrainConfigError(f"factors {', '.join(names)} set {key} apart; accepted: factors that combine")
            settings[key] = value
    return " + ".join(CONDITIONS[name][0] for name in names), settings


if COMBINED:
    CONDITIONS["combination"] = combined(COMBINED)

# Trained after the others: a step of `tokens-256` costs about 7x the reference's (2048-token attention on one core).
LAST = ("tokens-256",)


def run_name(condition: str, seed: int) -> str:
    """The directory and card name of one run: `textured-s1`."""
    return f"{condition}-s{seed}"


def study_config(condition: str, seed: int) -> TrainConfig:
    """The training config of one run of the study; a TrainConfigError for an unknown condition or seed."""
    if condition not in CONDITIONS:
        raise TrainConfigError(f"unknown study condition {condition!r}; accepted: {', '.join(CONDITIONS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise TrainConfigError(f"seed = {seed!r}; accepted: an integer >= 0")
    return TrainConfig(**{**REFERENCE, **CONDITIONS[condition][1], "seed": seed})


def plan(conditions: list[str] | None = None, seeds: tuple[int, ...] = SEEDS) -> list[tuple[str, int]]:
    """(condition, seed) of every run, seed-major (every condition's first seed before any second seed), so a
    study cut short still has whole seeds of every condition; the costly `LAST` conditions after all others."""
    if conditions is None:
        conditions = [c for c in CONDITIONS if c not in LAST] + list(LAST)
    for name in conditions:
        study_config(name, 0)  # validates the name
    first = [name for name in conditions if name not in LAST]
    return [(name, seed) for seed in seeds for name in first] + [(name, seed) for name in LAST if name in conditions
                                                                for seed in seeds]


RUN_DETAILS = ("threads", "checkpoint_every", "snapshot_every", "init")  # settings that say where a run went, not what


def off_plan(settings: dict, condition: str, seed: int) -> list[str]:
    """The training settings (a run's train.json) that differ from the plan of `condition` and `seed`, the run's
    details aside; a setting the file lacks (added since) counts as planned."""
    planned = asdict(study_config(condition, seed))
    return sorted(k for k, v in planned.items() if k not in RUN_DETAILS and settings.get(k, v) != v)


def differs_only_in_factor(a: TrainConfig, b: TrainConfig) -> dict[str, tuple]:
    """{setting: (a's, b's)} for the settings two runs' configs differ in, the seed aside."""
    x, y = asdict(a), asdict(b)
    return {k: (x[k], y[k]) for k in x if k != "seed" and x[k] != y[k]}


LOCK_KIND = "study-lock"  # the signature a lock file carries (scd.files.signature): a file without it is a user's


class _Lock:
    """An exclusive lock file for one run, signed by the toolkit with its holder's pid; a signed lock whose holder is
    gone is taken over. A file of that name without the signature is a user's: it is never removed (TrainConfigError,
    before any run starts)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def holder(self) -> int | None:
        """The pid a toolkit-signed lock names; None if the file is gone; TrainConfigError if it is not the toolkit's."""
        try:
            content = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            content = None
        pid = content.get("pid") if isinstance(content, dict) and {k: content.get(k) for k in signature(LOCK_KIND)} \
            == signature(LOCK_KIND) else None
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
            raise TrainConfigError(f"{self.path} is in the way of the study's lock and was not written by the toolkit; "
                                   "accepted: move or rename that file")
        return pid

    def acquire(self) -> bool:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pid = self.holder()
                if pid is None:
                    continue  # released meanwhile
                try:
                    os.kill(pid, 0)
                    return False  # held by a live worker
                except ProcessLookupError:
                    self.path.unlink(missing_ok=True)  # its (signed) holder died: take it over
                    continue
                except (PermissionError, OverflowError):
                    return False
            os.write(fd, json.dumps({**signature(LOCK_KIND), "pid": os.getpid()}).encode())
            os.close(fd)
            return True
        return False

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


WRITE_CHECK = ".scd-probes-study-write-check.json"  # a name no run or lock takes: created and removed at once


def check_study_root(root: str | Path, writing: bool = True) -> Path:
    """The study root as a Path, once accepted: a usable path (not empty, no control character, short enough), not a
    file, not inside another of the toolkit's outputs (a run directory, a sweep, ...: writing there would make that
    output unrecognisable), and, when `writing`, a place a file can be created (proven by creating one and removing it
    again, as outputs are checked). TrainConfigError, one line, otherwise; a full disk is the machine's fault."""
    accepted = "a directory (new or of earlier study runs)"
    root = input_path(root, "study root", accepted, TrainConfigError)
    if root.exists() and not root.is_dir():
        raise TrainConfigError(f"study root {root} is a file; accepted: {accepted}")
    enclosing = inside_output(root)
    if enclosing is not None:
        raise TrainConfigError(f"study root {root} lies inside {enclosing}, an output of the toolkit; accepted: a path "
                               "outside the toolkit's outputs")
    if writing:
        probe = root / WRITE_CHECK
        try:
            check_output(probe, "plan", flag="study root")
        except OutputError as e:  # said of the root, not of the file that proved it
            raise TrainConfigError(str(e).replace(f"study root {probe}", f"study root {root}", 1)) from None
    return root


def run_state(root: Path, condition: str, seed: int) -> int:
    """Steps trained so far in a run's directory (0: not started)."""
    from scd.training.train import trained_steps

    return trained_steps(root / run_name(condition, seed))


def train_study(root: str | Path, conditions: list[str] | None = None, seeds: tuple[int, ...] = SEEDS,
                progress: bool = False, log=print, measured: frozenset[str] = frozenset(),
                threads: int | None = None) -> list[str]:
    """Train every run of the plan not yet done under `root`, sitting by sitting, skipping runs another worker
    holds and the runs named in `measured` (measured already: their cards are committed, their checkpoints may be on
    another machine); returns the names of the runs this worker finished. Start as many workers as there are cores,
    or one worker with `threads` = cores where a run must end sooner (a run detail, like the machine: it changes the
    order of floating-point sums, not a setting; a run resumed keeps the threads it was started with)."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise TrainConfigError(f"threads = {threads!r}; accepted: an integer >= 1, or None for the plan's")

    root = check_study_root(root)
    for condition, seed in plan(conditions, seeds):  # a user's look-alike of a lock refuses before any run starts
        _Lock(root / f".{run_name(condition, seed)}.lock").holder()
    from scd.training.train import train  # torch: only once the refusals that need none are made
    root.mkdir(parents=True, exist_ok=True)
    finished = []
    for condition, seed in plan(conditions, seeds):
        cfg, name = study_config(condition, seed), run_name(condition, seed)
        lock = _Lock(root / f".{name}.lock")
        if name in measured or run_state(root, condition, seed) >= cfg.steps or not lock.acquire():
            continue
        try:
            started = root / name / "train.json"
            if run_state(root, condition, seed) > 0 and started.is_file():
                cfg = replace(cfg, threads=json.loads(started.read_text()).get("threads", cfg.threads))
            elif threads is not None:
                cfg = replace(cfg, threads=threads)
            while (done := run_state(root, condition, seed)) < cfg.steps:
                until = min(cfg.steps, (done // SITTING + 1) * SITTING)
                train(cfg, root / name, resume=done > 0, force=done == 0 and (root / name).exists(),
                      progress=progress, until=until)
                log(f"{name}: step {until} of {cfg.steps}")
            finished.append(name)
        finally:
            lock.release()
    return finished
