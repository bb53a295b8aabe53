"""E-boards and the listening page (issue 18): JSON, RSS and SSE feeds with the emergency
banner; the full-screen board page and the listening page in real headless Chromium
(screenshots at 1920x1080 and 640x320 with a Vietnamese storm warning on air)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from tests.conftest import require_tool
from tests.integration.conftest import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STORM = ("Cảnh báo bão số 3: gió mạnh cấp 12, giật cấp 15. Người dân khẩn trương vào nơi "
         "trú ẩn an toàn, tàu thuyền không ra khơi. ") * 4

TOML = """
demo_zone = false
listen_public_zones = ["xa1"]
[[zones]]
id = "xa1"
name = "Xã Bình Minh"
[[zones]]
id = "xa2"
name = "Xã Hai"
"""


def chromium(args: list[str], timeout: float = 40) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="loa-board-")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-quic", "--no-first-run", "--no-default-browser-check",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}"]
    p = subprocess.Popen([CHROMIUM, *flags, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate(timeout=10)
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def png_rgb(path: Path) -> np.ndarray:
    import av
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def share_near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> float:
    d = np.abs(img.astype(int) - np.array(rgb)).sum(axis=2)
    return float((d < tol).mean())


ADMIN = {"Authorization": "Bearer board-admin"}
ENV = {"LOA_ADMIN_TOKEN": "board-admin"}


def storm_on_air(s) -> str:
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "emergency", "attention": False,
        "source": {"kind": "tts", "text": STORM}}, headers=ADMIN)
    assert st in (200, 201), b
    wait_for("on air", lambda: s.request("GET", "/api/v1/boards/xa1")[1].get("on_air"), 20)
    return b["id"]


def test_board_feeds_json_rss_sse_and_banner_hold(serve):
    s = serve(TOML, env=ENV)
    st, idle = s.request("GET", "/api/v1/boards/xa1")
    assert st == 200 and idle["clear"] is True and idle["banner"] is None and idle["next"] == []
    assert s.request("GET", "/api/v1/boards/xa2")[0] == 401     # private zone
    assert s.request("GET", "/api/v1/boards/nope")[0] == 404
    # the SSE stream: the first state, then the change when the warning starts
    c = socket.create_connection(("127.0.0.1", s.port), timeout=20)
    c.sendall(b"GET /api/v1/boards/xa1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    bid = storm_on_air(s)
    st, b = s.request("GET", "/api/v1/boards/xa1")
    assert b["banner"]["colour"] == "#E53935" and b["clear"] is False
    assert "bão số 3" in b["text"] and b["on_air"]["level"] == "emergency"
    data = b""
    deadline = time.monotonic() + 15
    while b'"banner": {' not in data and time.monotonic() < deadline:
        data += c.recv(65536)
    c.close()
    assert b"text/event-stream" in data and b"event: board" in data and b'"banner": {' in data
    st, rss = s.request("GET", "/boards/xa1.rss")
    assert st == 200
    root = ET.fromstring(rss.encode())
    titles = [t.text for t in root.iter("title")]
    assert titles[0] == "Xã Bình Minh" and any("CẢNH BÁO" in (t or "") for t in titles)
    s.request("DELETE", f"/api/v1/broadcasts/{bid}", headers=ADMIN)
    wait_for("stopped", lambda: s.request("GET", "/api/v1/boards/xa1")[1]["on_air"] is None, 15)
    # the banner stays after the warning ends (it repeats until superseded)
    st, after = s.request("GET", "/api/v1/boards/xa1")
    assert after["on_air"] is None and after["banner"] is not None


def test_board_page_in_chromium_at_two_sizes(serve, tmp_path):
    require_tool("chromium", "the board is a real browser")
    s = serve(TOML, env=ENV)
    storm_on_air(s)
    for w, h in ((1920, 1080), (640, 320)):
        shot = tmp_path / f"board-{w}x{h}.png"
        r = chromium([f"--window-size={w},{h}", f"--screenshot={shot}",
                      "--timeout=4000", f"{s.url}/board/xa1"])
        assert shot.exists(), r.stderr.decode(errors="replace")[-2000:]
        img = png_rgb(shot)
        assert img.shape[:2] == (h, w)
        red = share_near(img, (0xE5, 0x39, 0x35))
        assert red > 0.05, f"{w}x{h}: banner covers {red:.1%}"
        yellow = share_near(img, (0xFF, 0xEB, 0x3B), 120)   # the scrolling bulletin text
        assert yellow > 0.002, f"{w}x{h}: bulletin text {yellow:.2%}"
    r = chromium(["--window-size=1920,1080", "--timeout=4000", "--dump-dom",
                  f"{s.url}/board/xa1"])
    dom = r.stdout.decode()
    assert "Xã Bình Minh" in dom and "KHẨN CẤP" in dom and "bão số 3" in dom


def test_listening_page_in_chromium(serve, tmp_path):
    require_tool("chromium", "the phone is a real browser")
    s = serve(TOML, env=ENV)
    storm_on_air(s)
    r = chromium(["--window-size=390,844", "--virtual-time-budget=3000", "--dump-dom",
                  f"{s.url}/nghe/xa1"])
    dom = r.stdout.decode()
    assert "Nghe đài: Xã Bình Minh" in dom, dom[-3000:]
    assert "Đang phát" in dom and "người đang nghe" in dom
    assert 'id="player"' in dom
    r = chromium(["--window-size=390,844", "--virtual-time-budget=3000", "--dump-dom",
                  f"{s.url}/nghe/xa2"])
    assert "Cần đăng nhập" in r.stdout.decode()


def test_bulletin_text_is_carried_whole(serve):
    """A TTS bulletin's whole text (not the 80-character title) reaches the board while it
    airs and the archive once it is done."""
    s = serve(TOML)
    text = ("Thông báo: từ ngày mai, trạm y tế xã tiêm vắc xin sởi cho trẻ em dưới năm tuổi, "
            "các gia đình mang theo sổ tiêm chủng.")
    assert len(text) > 100
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "normal", "source": {"kind": "tts", "text": text}})
    assert st in (200, 201), b
    board = wait_for("on the board", lambda: (lambda d: d if d.get("on_air") else None)(
        s.request("GET", "/api/v1/boards/xa1")[1]), 15)
    assert board["text"] == text, board
    s.wait_state(b["id"])
    e = wait_for("archived", lambda: s.request("GET", "/api/v1/archive")[1]["entries"], 15)
    assert e[0]["text"] == text, e[0]


def test_next_scheduled_items_on_the_listen_api_and_board(serve):
    import datetime as dt
    s = serve(TOML)
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).replace(microsecond=0)
    st, sch = s.request("POST", "/api/v1/schedules", {
        "zones": ["xa1"], "level": "normal", "title": "Bản tin chiều",
        "source": {"kind": "tone", "freq_hz": 880, "seconds": 2.0},
        "start": start.strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert st == 201, sch
    info = s.request("GET", "/api/v1/listen/xa1")[1]
    assert [i["title"] for i in info["playing_next"]] == ["Bản tin chiều"], info
    assert info["playing_next"][0]["at"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    board = wait_for("on the board", lambda: s.request("GET", "/api/v1/boards/xa1")[1]["next"],
                     10, 0.3)
    assert board[0]["title"] == "Bản tin chiều"
