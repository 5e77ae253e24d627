"""Log lines carry untrusted values: none may end a line and forge the next."""

from __future__ import annotations

import json
import logging

import pytest

from agent.logs import JSONFormatter, TextFormatter

FORGED = "x.yaml\nts=2026-01-01T00:00:00Z level=info logger=gatewaylb.agent event=FORGED"


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("gatewaylb.agent", logging.WARNING, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    "value", [FORGED, "a\rb", "a\x1b[31mred", "a\u2028b\u2029c", "a\x00b", "tab\there"]
)
def test_a_value_with_control_characters_stays_on_its_line(value: str) -> None:
    line = TextFormatter().format(_record("event=source_problem message=%s", value))
    print(line)
    assert "\n" not in line and "\r" not in line
    assert all(ord(c) >= 0x20 and c not in "\u2028\u2029\x7f" for c in line)
    assert line.startswith("ts=") and len(line.splitlines()) == 1


def test_the_escapes_say_what_was_there() -> None:
    line = TextFormatter().format(_record("event=x message=%s", "a\nb\x1bc\u2028d"))
    assert line.endswith("message=a\\nb\\x1bc\\u2028d")


def test_json_lines_are_one_line_too() -> None:
    line = JSONFormatter().format(_record("event=x message=%r", FORGED))
    assert "\n" not in line
    assert json.loads(line)["msg"].endswith("event=FORGED'")
