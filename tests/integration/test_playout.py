"""Relays and playlists through a real server (control/playout.py): a relay of a local
upstream airs, its dead air while the upstream is cut raises a notice (in the as-run log) with
the fallback on air, and it comes back by itself when the upstream is restored; relay URLs that
are not http(s) or reach private addresses are refused with 422 invalid_url, for broadcasts and
schedules alike, with nothing saved; a playlist airs its items and is cut at its slot. ADTS AAC
and live HLS relays are decoded at the zone by ffmpeg on its SDP across a cut and a restore."""
from __future__ import annotations

import datetime as dt
import socket
import time

import pytest

import numpy as np

from tests.integration.conftest import free_udp_ports, read_wav, wait_for
from tests.integration.relay_upstream import HlsUpstream, Upstream, make_hls, make_stream
from tests.integration.test_ffmpeg_client import start_ffmpeg, stop_ffmpeg

pytestmark = pytest.mark.integration
HCM = dt.timezone(dt.timedelta(hours=7))


def notices(srv, bid):
    st, log = srv.request("GET", f"/api/v1/asrun?broadcast={bid}")
    assert st == 200, log
    return [e.get("notice") or (e.get("data") or {}).get("notice") or str(e)
            for e in log["events"] if e["type"] == "broadcast.notice"]


def packets(sock: socket.socket, seconds: float) -> int:
    n = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.recv(2048)
            n += 1
        except TimeoutError:
            pass
    return n


def test_a_relay_airs_rides_out_a_cut_upstream_and_comes_back(serve, tmp_path):
    port = free_udp_ports(1)[0]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", port))
    probe.settimeout(0.1)
    up = Upstream(make_stream(tmp_path / "vov.mp3", 1000.0))
    srv = serve(f'relay_allow_hosts = ["127.0.0.1"]\nrelay_reconnect_max_s = 1.0\n'
                f'[[zones]]\nid = "xa"\nunicast = ["127.0.0.1:{port}"]\n')
    try:
        st, b = srv.request("POST", "/api/v1/broadcasts", {
            "zones": ["xa"], "source": {"kind": "relay", "url": up.url, "silence_s": 1,
                                        "fallback": "tone"}})
        assert st == 201, b
        assert b["source"]["kind"] == "relay" and b["source"]["url"] == up.url
        wait_for("on air", lambda: srv.request("GET", f"/api/v1/broadcasts/{b['id']}")[1]
                 .get("state") == "playing", 15)
        assert packets(probe, 1.0) > 35
        up.cut()
        wait_for("dead air raised", lambda: any(n.startswith("dead air")
                                                 for n in notices(srv, b["id"])), 10)
        assert packets(probe, 1.0) > 35           # the fallback is on air meanwhile
        up.restore()
        wait_for("relay restored", lambda: any(n.startswith("relay restored")
                                               for n in notices(srv, b["id"])), 15)
        assert up.connections >= 2
        st, live = srv.request("GET", f"/api/v1/broadcasts/{b['id']}")
        assert live["state"] == "playing"
        st, _ = srv.request("DELETE", f"/api/v1/broadcasts/{b['id']}")
        assert st in (200, 204)
    finally:
        probe.close()
        up.close()


def windows_hz(x: np.ndarray, rate: int, win_s: float = 0.5) -> list[float]:
    """The dominant frequency of each `win_s` window that is not silent (0.0 for silent)."""
    n = int(rate * win_s)
    out = []
    for i in range(len(x) // n):
        w = x[i * n:(i + 1) * n]
        if np.sqrt(np.mean(w ** 2)) < 10 ** (-50 / 20):
            out.append(0.0)
            continue
        spec = np.abs(np.fft.rfft(w * np.hanning(n)))
        out.append(float(np.argmax(spec) * rate / n))
    return out


@pytest.mark.parametrize("kind", ["adts", "hls"])
def test_an_aac_or_hls_relay_is_heard_at_the_zone_and_reconnects(serve, tmp_path, kind):
    """An ADTS AAC stream (Icecast-style) or a live HLS playlist of AAC segments, relayed to a
    zone and decoded there by ffmpeg on the zone's SDP: the served tone, the fallback tone
    while the upstream is cut, the served tone again after it is restored (reconnected)."""
    if kind == "adts":
        up: Upstream = Upstream(make_stream(tmp_path / "vov.aac", 1000.0, fmt="adts"),
                                content_type="audio/aac")
    else:
        up = HlsUpstream(make_hls(tmp_path / "hls", 1000.0, seconds=60.0))
    p_ff = free_udp_ports(1)[0]
    srv = serve(f'relay_allow_hosts = ["127.0.0.1"]\nrelay_reconnect_max_s = 1.0\n'
                f'[[zones]]\nid = "xa"\nunicast = ["127.0.0.1:{p_ff}"]\n')
    st, sdp = srv.request("GET", "/api/v1/zones/xa/sdp")
    assert st == 200
    (tmp_path / "xa.sdp").write_text(sdp)
    ff = start_ffmpeg(tmp_path / "xa.sdp", tmp_path / "ff.wav")
    err = ""
    try:
        time.sleep(1.0)
        st, b = srv.request("POST", "/api/v1/broadcasts", {
            "zones": ["xa"], "source": {"kind": "relay", "url": up.url, "silence_s": 1,
                                        "fallback": "tone"}})
        assert st == 201, b
        wait_for("on air", lambda: srv.request("GET", f"/api/v1/broadcasts/{b['id']}")[1]
                 .get("state") == "playing", 15)
        time.sleep(4.0)
        up.cut()
        wait_for("dead air raised", lambda: any(n.startswith("dead air")
                                                 for n in notices(srv, b["id"])), 20)
        time.sleep(2.0)                            # the fallback on air
        up.restore()
        wait_for("relay restored", lambda: any(n.startswith("relay restored")
                                               for n in notices(srv, b["id"])), 20)
        time.sleep(3.0)
        assert up.connections + getattr(up, "playlists", 0) >= 2
        st, _ = srv.request("DELETE", f"/api/v1/broadcasts/{b['id']}")
        assert st in (200, 204)
        time.sleep(0.5)
    finally:
        err = stop_ffmpeg(ff)
        up.close()
    x, rate = read_wav(tmp_path / "ff.wav")
    hz = windows_hz(x, rate)
    near = [("up" if abs(f - 1000) < 15 else "fallback" if abs(f - 440) < 15 else "?")
            for f in hz if f]
    # served tone, then the fallback, then the served tone again, each for a while
    runs: list[tuple[str, int]] = []
    for label in near:
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    long_runs = [label for label, n in runs if n >= 3]   # 1.5 s or more
    assert long_runs[:3] == ["up", "fallback", "up"], (runs, err)
    assert near.count("?") <= 4, (runs, err)             # only at the switches
    # no gaps while on air (HLS arrives a segment at a time: the relay's queue rides it out)
    on = [i for i, f in enumerate(hz) if f]
    assert hz[on[0]:on[-1]].count(0.0) <= 2, hz


def test_bad_relays_and_playlists_are_refused_and_nothing_is_saved(serve):
    srv = serve('relay_allow_hosts = ["127.0.0.1"]\n[[zones]]\nid = "xa"\nunicast = ["127.0.0.1:9"]\n')
    start = (dt.datetime.now(HCM) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    for url in ["file:///etc/passwd", "ftp://127.0.0.1/a.mp3", "http://169.254.169.254/latest",
                "http://10.0.0.7:8000/live", "http://127.0.0.2:8000/live", "http:///x",
                "rtsp://127.0.0.1/a"]:
        src = {"kind": "relay", "url": url}
        st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "source": src})
        assert st == 422 and e["error"]["code"] == "invalid_url", (url, st, e)
        st, e = srv.request("POST", "/api/v1/schedules", {"zones": ["xa"], "source": src,
                                                          "start": start})
        assert st == 422 and e["error"]["code"] == "invalid_url", (url, st, e)
    st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "source": {
        "kind": "relay", "url": "http://127.0.0.1:1/a.mp3", "fallback": "abcdef"}})
    assert st == 404 and e["error"]["code"] == "unknown_media", e
    st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "source": {
        "kind": "playlist", "items": [{"kind": "tone"}, {"kind": "media", "id": "abcdef"}]}})
    assert st == 404 and e["error"]["code"] == "unknown_media", e
    for bad in [{"kind": "playlist", "items": []},
                {"kind": "playlist", "items": [{"kind": "relay", "url": "http://127.0.0.1/"}]},
                {"kind": "playlist", "items": [{"kind": "tone"}], "slot_s": -5},
                {"kind": "relay"}, {"kind": "relay", "url": "http://127.0.0.1/",
                                    "fallback": "../etc"}]:
        st, e = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "source": bad})
        assert 400 <= st < 500, (bad, st, e)
    st, lst = srv.request("GET", "/api/v1/schedules")
    assert st == 200 and lst["schedules"] == [], lst


def test_a_playlist_airs_in_order_and_is_cut_at_its_slot(serve):
    srv = serve('[[zones]]\nid = "xa"\nunicast = ["127.0.0.1:9"]\n')
    st, b = srv.request("POST", "/api/v1/broadcasts", {"zones": ["xa"], "source": {
        "kind": "playlist", "items": [{"kind": "tone", "freq_hz": 500, "seconds": 1.0},
                                      {"kind": "tone", "freq_hz": 800, "seconds": 30.0}],
        "slot_s": 2.5, "fade_s": 1.0}})
    assert st == 201, b
    assert b["duration_s"] == 2.5 and b["source"]["slot_s"] == 2.5
    t0 = time.monotonic()
    done = srv.wait_state(b["id"], timeout=10)
    took = time.monotonic() - t0
    assert done["state"] == "finished" and not done["error"], done
    assert 2.0 < took < 4.5, took
    assert done["position_s"] == pytest.approx(2.5, abs=0.1)
    # a schedule of a playlist knows how long it runs (listing, conflicts)
    start = (dt.datetime.now(HCM) + dt.timedelta(hours=1)).isoformat(timespec="seconds")
    st, s = srv.request("POST", "/api/v1/schedules", {"zones": ["xa"], "start": start, "source": {
        "kind": "playlist", "shuffle": True,
        "items": [{"kind": "tone", "seconds": 20}, {"kind": "siren", "seconds": 10}]}})
    assert st == 201 and s["duration_s"] == 30.0, s
