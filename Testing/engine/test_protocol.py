"""repux.protocol: both ends of the engine/host wire, round-tripped through what each end really uses (the engine's
printer and logging setup, the host's reader)."""

from __future__ import annotations

import io
import logging
import math
import os

import pytest

from repux.progress import JsonProgressPrinter, ProgressTracker
from repux.protocol import (
    CONTROL_ARGUMENTS,
    DEBUG_LOG_FORMAT,
    EXIT_SIGNAL_BASE,
    LOG_FORMAT,
    STOP_COMMANDS,
    STOP_LINE,
    LogLine,
    ProgressEvent,
    error_line,
    parse_log_line,
    read_command_lines,
)


def test_progress_events_round_trip_through_the_engine_printer():
    stream = io.StringIO()
    printer = JsonProgressPrinter(stream)
    tracker = ProgressTracker(printer, {"load": 1, "infer": 3})
    tracker.update("load", 1.0, "read", case="a.nii.gz")
    tracker.update("infer", 0.5, "window 4/8", windows_done=4, val_dice={"liver": float("nan")})
    tracker.done(outputs={"labels": "x.nrrd"})
    events = [ProgressEvent.from_line(line) for line in stream.getvalue().splitlines()]
    assert [e.stage for e in events] == ["load", "infer", "done"]
    assert events[0].fraction == pytest.approx(0.25) and events[0].extra == {"case": "a.nii.gz"}
    assert events[1].fraction == pytest.approx(0.625) and events[1].message == "window 4/8"
    assert events[1].extra == {"windows_done": 4, "val_dice": {"liver": None}}, "NaN must travel as null"
    assert events[2].fraction == 1.0 and events[2].eta_s == 0.0 and events[2].extra["outputs"] == {"labels": "x.nrrd"}


def test_an_event_survives_its_line_and_its_dict():
    event = ProgressEvent("train", 0.4, "iteration 40/100", 12.34, {"iteration": 40, "loss": 0.5})
    again = ProgressEvent.from_line(event.to_line())
    assert again == ProgressEvent("train", 0.4, "iteration 40/100", 12.3, {"iteration": 40, "loss": 0.5})
    assert again.to_dict() == {"stage": "train", "fraction": 0.4, "message": "iteration 40/100", "eta_s": 12.3, "iteration": 40, "loss": 0.5}
    assert event.to_line().endswith("\n") and event.to_line().count("\n") == 1


@pytest.mark.parametrize(
    "line",
    ["plain text", "", "{not json", '{"stage": "x"}', '{"fraction": 0.5}', '{"stage": "x", "fraction": "half"}', "[1, 2]", '"text"'],
)
def test_other_lines_are_not_progress(line):
    assert ProgressEvent.from_line(line) is None


def test_fraction_is_clamped_and_a_bad_eta_is_unknown():
    e = ProgressEvent.from_line('{"stage": "x", "fraction": 1.5, "eta_s": "soon"}')
    assert e.fraction == 1.0 and e.eta_s is None and not math.isnan(e.fraction)


def test_log_and_error_lines_round_trip_through_the_engine_logging_format():
    for fmt, level in ((LOG_FORMAT, logging.WARNING), (DEBUG_LOG_FORMAT, logging.DEBUG)):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(fmt))
        log = logging.getLogger("repux.protocol-test")
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.log(level, "input intensities do not look like CT")
        log.critical("out of memory")
        lines = stream.getvalue().splitlines()
        assert parse_log_line(lines[0]) == LogLine(logging.getLevelName(level), "input intensities do not look like CT")
        assert parse_log_line(lines[1]) == LogLine("ERROR", "out of memory")
    assert parse_log_line(error_line("model 'x' is not installed")) == LogLine("ERROR", "model 'x' is not installed")
    assert parse_log_line("Traceback (most recent call last):", "stdout") == LogLine("INFO", "Traceback (most recent call last):", "stdout")


def test_the_stop_line_is_read_as_a_stop_command():
    r, w = os.pipe()
    os.write(w, (STOP_LINE + "\n   \nnot json\n" + '{"command": "status"}\n').encode())
    os.close(w)
    commands = list(read_command_lines(r))
    os.close(r)
    assert commands[0]["command"] in STOP_COMMANDS
    assert commands[1] == {"command": None, "raw": "not json"} and commands[2] == {"command": "status"}
    assert len(commands) == 3


def test_control_arguments_and_exit_codes_are_what_the_cli_accepts():
    from repux.cli.main import build_parser

    args = build_parser().parse_args(["segment", "-i", "x.nii.gz", "-o", "y.nii.gz", *CONTROL_ARGUMENTS])
    assert args.control == "stdin"
    assert EXIT_SIGNAL_BASE + 15 == 143
