"""Property-based tests of every parser of numbers, lists and ranges: any string either parses to what its
specification says, or is refused (exit code 2 through the command). Each specification is written here again,
independently of the parser's regular expressions, as plain string handling."""

import argparse
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from probe_cli.checks import (
    CLIP_MAX,
    SEED_MAX,
    UsageError,
    indices,
    integer_list,
    latent_size,
    layers,
    layers_syntax,
    number,
    plain_name,
    ranged,
)
from probe_cli.cli import build_parser, main

# Strings built from the characters that matter (digits, signs, separators, spaces, letters, look-alikes) and
# from anything at all.
PIECES = st.sampled_from(["0", "1", "7", "15", "29", "99", "-", "+", ",", " ", "x", "X", ".", "e", "_", "all", "nan",
                          "inf", "\u0663", "\t", "9" * 25, "1e3", "0x1"])
TEXT = st.one_of(st.lists(PIECES, max_size=8).map("".join), st.text(max_size=20))


def spec_integer(text: str) -> int | None:
    """Spaces around, an optional sign, ASCII digits: nothing else."""
    body = text.strip()
    if body[:1] in "+-" and body:
        sign, body = body[0], body[1:]
    else:
        sign = "+"
    if not body or any(c not in string.digits for c in body):
        return None
    return int(body) * (-1 if sign == "-" else 1)


def _refused(call) -> bool:
    try:
        call()
    except (UsageError, argparse.ArgumentTypeError):
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(TEXT, st.integers(-5, 5), st.integers(0, 2000))
@example("\u0663", 0, 10)
@example(" +7 ", 1, 10)
@example("1_0", 1, 100)
def test_ranged_integers(text, low, span):
    high = low + span
    expected = spec_integer(text)
    parse = ranged(low, high)
    if expected is None or not low <= expected <= high:
        assert _refused(lambda: parse(text))
    else:
        assert parse(text) == expected


def spec_indices(text: str, low: int, high: int) -> list[int] | None:
    values = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if first.strip() == "" and dash:  # a leading minus sign: "-3" or "-3-5"
            rest_first, dash2, last2 = last.partition("-")
            first, dash, last = "-" + rest_first, dash2, last2
        a = spec_integer(first)
        b = spec_integer(last) if dash else a
        if a is None or b is None or (dash and last.strip()[:1] in "+-"):
            return None
        if not (low <= a <= high and low <= b <= high) or b < a:
            return None
        if len(values) + b - a + 1 > 10_000:
            return None
        values += range(a, b + 1)
    return values if len(set(values)) == len(values) else None


@settings(max_examples=400, deadline=None)
@given(TEXT)
@example("0-3")
@example("0,2,5")
@example("3-1")
@example("-1")
@example("0-3,3")
@example(" 1 - 2 ")
@example(f"0-{CLIP_MAX}")
def test_clip_and_seed_lists(text):
    for low, high in ((0, CLIP_MAX), (0, SEED_MAX), (0, 20)):
        expected = spec_indices(text, low, high)
        if expected is None:
            assert _refused(lambda low=low, high=high: indices(text, "--clip", low, high))
        else:
            assert indices(text, "--clip", low, high) == expected


@settings(max_examples=300, deadline=None)
@given(TEXT)
@example("50,4")
@example("4,4")
@example("")
def test_integer_lists(text):
    parts = text.split(",")
    values = [spec_integer(p) for p in parts]
    valid = len(parts) <= 64 and all(v is not None and 1 <= v <= 1000 for v in values) and len(set(values)) == len(values)
    if valid:
        assert integer_list(1, 1000)(text) == values
    else:
        assert _refused(lambda: integer_list(1, 1000)(text))


@settings(max_examples=400, deadline=None)
@given(TEXT, st.integers(1, 40))
@example("all", 30)
@example("15", 30)
@example("0,5,15", 30)
@example("1,,2", 30)
@example("1,1", 30)
@example("30", 30)
def test_layers(text, depth):
    if text.strip() == "all":
        assert layers_syntax(text) == text and layers(text, depth) == "all"
        return
    parts = text.split(",")
    values = [spec_integer(p) for p in parts]
    syntax_ok = all(v is not None and len(p.strip().lstrip("+-")) <= 6 for p, v in zip(parts, values, strict=True))
    if not syntax_ok:
        assert _refused(lambda: layers_syntax(text))
        return
    assert layers_syntax(text) == text
    if len(set(values)) != len(values) or not all(0 <= v < depth for v in values):
        assert _refused(lambda: layers(text, depth))
    else:
        assert layers(text, depth) == values


@settings(max_examples=300, deadline=None)
@given(TEXT)
@example("60x104")
@example("8X8")
@example("0x8")
@example("8by8")
def test_latent_size(text):
    first, sep, second = text.lower().partition("x")
    a, b = spec_integer(first), spec_integer(second)
    signed = any(part.strip()[:1] in "+-" for part in (first, second))
    valid = sep and a is not None and b is not None and not signed and 1 <= a <= 1024 and 1 <= b <= 1024 \
        and len(first.strip()) <= 5 and len(second.strip()) <= 5
    if valid:
        assert latent_size(text) == (a, b)
    else:
        assert _refused(lambda: latent_size(text))


def spec_number(text: str) -> float | None:
    body = text.strip()
    allowed = set(string.digits + "+-.eE")
    if not body or any(c not in allowed for c in body):
        return None
    try:
        value = float(body)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.floats(allow_nan=True, allow_infinity=True).map(repr)))
@example("1e-3")
@example("nan")
@example("inf")
@example("1e999")
@example(".5")
@example("5.")
def test_numbers(text):
    expected = spec_number(text)
    if expected is None or not 1e-12 <= expected <= 10:
        assert _refused(lambda: number(text, 1e-12, 10))
    else:
        assert number(text, 1e-12, 10) == expected


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, st.text(alphabet=string.ascii_letters + string.digits + "._-/", max_size=70)))
@example("baseline")
@example("../x")
@example(".hidden")
@example("x.safetensors")
def test_plain_names(text):
    allowed = set(string.ascii_letters + string.digits + "_.-")
    valid = 1 <= len(text) <= 64 and text[0] in string.ascii_letters + string.digits and set(text) <= allowed \
        and ".." not in text and not text.endswith((".safetensors", ".json", ".md"))
    if valid:
        assert plain_name(text) == text
    else:
        assert _refused(lambda: plain_name(text))


# probe run's frame counts are parsed only (RecordSpec checks them: tests/test_validated_once.py and the bad-input
# tables); the commands that still range-check at the parser are these.
FLAGS = [("intervene", "--steps", 1, 1000), ("intervene", "--frames", 1, 1024), ("generate", "--context", 1, 1024),
         ("generate", "--clip", 0, CLIP_MAX), ("generate", "--seed", 0, SEED_MAX),
         ("bench", "--repeats", 1, 100), ("intervene", "--refresh", 1, 1000), ("train", "--batch-size", 1, 4096),
         ("train", "--threads", 1, 1024), ("export", "--clips", 1, 10_000)]


@pytest.mark.parametrize("command, flag, low, high", FLAGS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_through_the_command_a_flag_parses_to_its_spec_or_exits_2(command, flag, low, high, text, capsys):
    head = {"train": ["train", "baseline", "--out", "t"], "export": ["export", "run", "--name", "n"]}.get(command, [command])
    argv = [*head, f"{flag}={text}"]
    expected = spec_integer(text)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        assert e.code == 2 and (expected is None or not low <= expected <= high)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        return
    assert expected is not None and low <= expected <= high
    assert getattr(args, flag.lstrip("-").replace("-", "_")) == expected


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_through_the_command_a_clip_list_is_refused_with_exit_2(text, capsys, tmp_path_factory):
    """--clip is parsed before the model loads: a refused spec exits 2 with one line and writes nothing."""
    if spec_indices(text, 0, CLIP_MAX) is not None:
        return
    out = tmp_path_factory.mktemp("clip") / "run"
    assert main(["run", "--clip", text, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
