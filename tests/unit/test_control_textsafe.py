"""User text into line-oriented outputs, and the JSON every route parses (issue 13, 6e/6f)."""
from __future__ import annotations

import io
import json
import logging

import pytest

from control import textsafe
from control.api.zones import zone_sdp
from control.events import EventHub
from control.settings import Settings
from streamer.zones import Zone

BREAKS = ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x1c", "\x1e"]
SDP_LINES = ["v", "o", "s", "i", "c", "t", "m", "a", "a", "a", "a"]


@pytest.mark.parametrize("br", BREAKS)
def test_a_zone_name_cannot_add_lines_to_the_public_sdp(br):
    name = f"Xã Nhơn Lý{br}c=IN IP4 6.6.6.6{br}m=audio 9 RTP/AVP 0{br}"
    sdp = zone_sdp(Zone("xa", name=name), "239.1.1.1", 5004, 1234, Settings(_env_file=None))
    lines = sdp.split("\r\n")
    assert lines[-1] == ""
    assert [ln[0] for ln in lines[:-1]] == SDP_LINES
    assert all(ln[1] == "=" for ln in lines[:-1])
    # no reader that splits on any line break sees more lines than we wrote
    assert len(sdp.splitlines()) == len(SDP_LINES)
    assert "Xã Nhơn Lý" in sdp and sum(ln.startswith("c=") for ln in lines) == 1


@pytest.mark.parametrize("br", BREAKS)
def test_an_event_is_one_sse_message_whatever_its_text(br):
    ev = {"seq": 7, "type": f"broadcast.started{br}event: x", "title": f"a{br}data: forged",
          "owner_name": f"Ông An{br}{br}id: 99"}
    out = EventHub.sse(ev).decode()
    assert out.endswith("\n\n") and out.count("\n\n") == 1
    lines = out[:-2].splitlines()
    assert len(lines) == 3 and all(ln.startswith(("id: ", "event: ", "data: ")) for ln in lines)
    assert json.loads(lines[2][len("data: "):])["title"] == f"a{br}data: forged"


@pytest.mark.parametrize("br", BREAKS)
def test_one_line_header_value_and_csv_cell(br):
    s = f"a{br}b\x00c\x7f"
    assert len(textsafe.one_line(s).splitlines()) == 1
    assert len(textsafe.header_value(s).splitlines()) == 1
    textsafe.header_value("Nguyễn\u2028x").encode("latin-1")  # a header can carry it
    assert len(textsafe.csv_cell(s).splitlines()) == 1
    assert textsafe.csv_cell("=cmd|' /C calc'!A0").startswith("'")
    assert textsafe.one_line("\ud800") == "\ufffd"


@pytest.mark.parametrize("br", BREAKS)
def test_a_log_line_stays_one_line(br):
    logger = logging.getLogger("test.textsafe")
    root = logging.Logger("root-under-test")
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(h)
    textsafe.install_log_escaping(root)
    rec = logger.makeRecord("t", logging.WARNING, __file__, 1, "unknown zone %s", (f"x{br}ERROR forged",), None)
    h.handle(rec)
    assert buf.getvalue().count("\n") == 1 and buf.getvalue().startswith("WARNING unknown zone x")


@pytest.mark.parametrize("raw", ["1" * 1001, "-" + "1" * 5001, '"\\ud800"', '{"\\udfff": 1}',
                                 "NaN", "-Infinity", "1e999", "[" * 65 + "]" * 65,
                                 "[" * 100000, '{"a": [' * 40 + "]}" * 40, b"\xff", "{"])
def test_json_the_server_cannot_carry_is_refused(raw):
    with pytest.raises(ValueError):
        textsafe.loads(raw)


@pytest.mark.parametrize("raw", ["1" * 1000, '"\\ud83d\\ude00"', "1.5e308", "[" * 64 + "]" * 64,
                                 '{"name": "Xã Nhơn Lý"}'])
def test_json_the_server_can_carry_is_parsed(raw):
    assert textsafe.loads(raw) == json.loads(raw)
