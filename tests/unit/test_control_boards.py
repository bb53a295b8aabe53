"""The e-board's pure parts (control/boards.py): the banner and its colours, SSE escaping."""
from __future__ import annotations

from control.boards import banner_for, sse_data


def test_banner_colours_follow_decision_18_2021():
    want = {1: "#4FC3F7", 2: "#FFF176", 3: "#FB8C00", 4: "#E53935", 5: "#8E24AA"}
    for risk, colour in want.items():
        b = banner_for("emergency", risk, "Bão", "Bão")
        assert b is not None and b["colour"] == colour and b["risk_level"] == risk
    assert banner_for("priority", "3", "x", "x")["colour"] == "#FB8C00"   # an alert's level
    assert banner_for("normal", None, "x", "x") is None
    assert banner_for("normal", 9, "x", "x") is None                      # not a risk level
    b = banner_for("emergency", None, "", "Còi báo động")
    assert b["risk_level"] is None and b["colour"] == "#E53935" and b["text"] == "Còi báo động"


def test_sse_data_is_one_line():
    line = sse_data({"text": "a\nb\r\u2028c\u2029d\x85e"})
    assert "\n" not in line and "\r" not in line
    assert not any(ch in line for ch in "\u2028\u2029\x85")
