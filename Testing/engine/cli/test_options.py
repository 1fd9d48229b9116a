"""The shared CLI conventions of repux/cli/options.py: one name per concept, typed values, hidden aliases."""

from __future__ import annotations

import argparse

import pytest

from repux.cli.main import build_parser, main
from repux.cli.options import DEPRECATED_ALIASES, csv_floats, device_name, open_fraction, positive_int, roi_size


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_help_hides_deprecated_aliases_but_they_parse(capsys):
    parser = build_parser()
    for path, sub in _subparsers(parser):
        text = sub.format_help()
        for alias in DEPRECATED_ALIASES:
            assert f"{alias} " not in text and f"{alias}," not in text, (path, alias)
    args = parser.parse_args(["phantoms", "--out", "x", "--n", "2"])
    assert args.output == "x"
    args = parser.parse_args(["models", "import", "m.zip", "--replace"])
    assert args.overwrite is True
    args = parser.parse_args(["benchmark", "--roi", "32", "--reference-batch", "2", "--json", "r.json"])
    assert (args.roi_size, args.sw_batch_size, args.output) == ((32, 32, 32), 2, "r.json")


def test_deprecated_spelling_logs_a_warning(monkeypatch):
    from repux.cli import options

    msgs: list[str] = []
    monkeypatch.setattr(options.logger, "warning", lambda fmt, *args: msgs.append(fmt % args))
    options.warn_deprecated_spellings(["--out", "x", "--out=y", "--replace", "--output", "z"])
    assert sum("--out is deprecated" in m for m in msgs) == 1
    assert any("use --overwrite" in m for m in msgs)
    assert len(msgs) == 2


def test_one_name_per_concept_across_commands():
    """Every command that writes names it -o/--output, replaces with --overwrite, windows with --roi-size."""
    parser = build_parser()
    seen: dict[str, set[str]] = {}
    for path, sub in _subparsers(parser):
        for action in sub._actions:
            for s in action.option_strings:
                seen.setdefault(s, set()).add(" ".join(path))
    for bad in ("--out-dir", "--json-out", "--roi-shape", "--batch", "--replace-existing"):
        assert bad not in seen
    for cmd in ("segment", "demo", "train", "finetune", "evaluate", "convert-official", "phantoms", "benchmark"):
        assert cmd in seen["--output"], cmd
    assert {"models install", "models import", "convert-official"} <= seen["--overwrite"]
    for cmd in ("segment", "demo", "train", "finetune", "benchmark", "presets"):
        assert cmd in seen["--roi-size"], cmd


@pytest.mark.parametrize(
    ("func", "text"),
    [
        (positive_int, "0"),
        (positive_int, "-3"),
        (positive_int, "1.5"),
        (positive_int, "abc"),
        (open_fraction, "1"),
        (open_fraction, "nan"),
        (open_fraction, "inf"),
        (roi_size, "abc"),
        (roi_size, "50"),
        (roi_size, ","),
        (roi_size, "96,96"),
        (device_name, "gpu"),
        (device_name, "cuda:x"),
    ],
)
def test_value_types_refuse_with_the_value_and_the_rule(func, text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        func(text)
    assert text in str(info.value) or "not allowed" in str(info.value)


def test_value_types_accept():
    assert positive_int("3") == 3
    assert open_fraction("0.5") == 0.5
    assert roi_size("96,96,64") == (96, 96, 64)
    assert roi_size("64") == (64, 64, 64)
    assert device_name("CUDA:1") == "cuda:1"
    assert csv_floats(6, "box")("-1,2,3,4,5,6") == (-1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    with pytest.raises(argparse.ArgumentTypeError):
        csv_floats(6, "box")("1,2,3")


def test_bad_value_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "-i", "ct.nii.gz", "-o", "out.seg.nrrd", "--roi-size", "abc"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("repux: error: argument --roi-size: 'abc'") and "repux segment --help" in err[0]
