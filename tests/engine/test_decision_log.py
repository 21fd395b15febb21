"""The engine's decision log: one record, rendered as the text enzpy.explain()
shows and as JSON; both renderings carry the same decisions."""

from __future__ import annotations

import json
import re

import pytest

from enzpy import _native
from enzpy.errors import EnzpyError

from .conftest import const
from .test_reverse_synthesis import SUM_SQUARES

PARAMS = [{"activity": "dup", "elem": "double"}, *const(), {"activity": "active", "elem": "double"}]
LINE = re.compile(
    r"^  (?P<kind>\S+) (?P<value>.+?)(?: (?P<detail>holds \S+))?(?: in block %(?P<block>\S+))?$"
)


def _request(**fields):
    return {
        "function": "f",
        "name": "df",
        "mode": "reverse",
        "ret_type": "double",
        "ret_activity": "active",
        "params": PARAMS,
        "log": True,
        **fields,
    }


def _parse_text(log: str) -> list[tuple[str, str, str, str | None]]:
    stage, out = None, []
    for line in log.splitlines():
        if not line.startswith(" ") and line.endswith(":"):
            stage = line[:-1]
            continue
        m = LINE.match(line)
        assert m, f"unparsed log line {line!r}"
        out.append((stage, m["kind"], m["value"], m["block"]))
    return out


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_text_and_json_logs_carry_the_same_decisions(mode):
    _, text = _native.differentiate(SUM_SQUARES.encode(), _request(mode=mode))
    _, js = _native.differentiate(SUM_SQUARES.encode(), _request(mode=mode, log_format="json"))
    records = json.loads(js)
    assert records, "the JSON log is empty"
    from_json = [(r["stage"], r["kind"], r["value"], r.get("block")) for r in records]
    assert _parse_text(text) == from_json
    stages = {r["stage"] for r in records}
    assert {"types", "activity", "tape" if mode == "reverse" else "forward"} <= stages


def test_an_unknown_log_format_is_a_request_error():
    with pytest.raises(EnzpyError, match="log_format"):
        _native.differentiate(SUM_SQUARES.encode(), _request(log_format="xml"))
