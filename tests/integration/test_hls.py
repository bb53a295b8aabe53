"""HLS listening (issue 18, control/hls.py + streamer/outputs/hls.py): ffmpeg (an independent
client) plays /listen/{zone}/index.m3u8 and hears the zone's tone; the rendition starts with the
first fetch, counts its client and stops when nobody fetched for three segments; bad segment
names and private zones are refused."""
from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
from tests.integration.conftest import wait_for
from tests.integration.test_listening import TOML, dominant


def test_hls_playlist_plays_in_ffmpeg_and_stops_when_idle(serve, tmp_path):
    s = serve(TOML)
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 523, "seconds": 30.0}})
    assert st in (200, 201), b
    out = tmp_path / "hls.raw"
    p = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i",
         s.url + "/listen/xa1/index.m3u8", "-t", "3", "-ac", "1", "-ar", "48000",
         "-f", "s16le", str(out)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    x = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float32) / 32768
    assert len(x) >= 48000 * 2.5, len(x) / 48000
    assert abs(dominant(x[4800:]) - 523) < 15
    assert float(np.sqrt(np.mean(x[4800:] ** 2))) > 0.05
    with urllib.request.urlopen(s.url + "/listen/xa1/index.m3u8", timeout=15) as r:
        assert r.headers["Content-Type"].startswith("application/vnd.apple.mpegurl")
        text = r.read().decode()
    assert "#EXT-X-TARGETDURATION:2" in text and ".ts" in text
    info = s.request("GET", "/api/v1/listen/xa1")[1]
    assert info["listeners"]["hls"] >= 1, info
    # HLS clients count on /metrics and in Icecast's status-json too (no Ogg listener here)
    _, m = s.request("GET", "/metrics")
    assert 'loa_listeners_by_kind{kind="hls",zone="xa1"}' in m, m[-2000:]
    hls_now = _gauge(m, 'loa_listeners_by_kind{kind="hls",zone="xa1"}')
    assert hls_now >= 1 and _gauge(m, 'loa_listeners{zone="xa1"}') == hls_now
    assert _gauge(m, "loa_listeners_total") == hls_now == _gauge(m, "loa_listeners_hls")
    _, ice = s.request("GET", "/status-json.xsl")
    src = [x for x in ice["icestats"]["source"] if x["listenurl"].endswith("/xa1.ogg")][0]
    assert src["listeners"] == src["hls_listeners"] >= 1 and src["ogg_listeners"] == 0, src
    # nobody fetches: the rendition stops after three segments (6 s) and its count drops
    wait_for("hls stopped", lambda: s.request("GET", "/api/v1/listen")[1]["hls_total"] == 0,
             15, 0.5)
    seg = [ln for ln in text.splitlines() if ln.endswith(".ts")][-1]
    time.sleep(2.5)   # the sweep runs every second (a fetch would count as a client again)
    assert _status(s.url + f"/listen/xa1/{seg}") == 404


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_hls_refusals(serve):
    s = serve(TOML, env={"LOA_ADMIN_TOKEN": "secret-admin"})
    assert s.request("GET", "/listen/xa2/index.m3u8")[0] == 401   # private zone
    assert s.request("GET", "/listen/nope/index.m3u8")[0] == 404
    assert s.request("GET", "/listen/xa1/..%2Findex.m3u8")[0] == 404
    assert s.request("GET", "/listen/xa1/seg00000.ts")[0] == 404   # nothing encoding


def _gauge(text: str, name: str) -> float:
    """The value of one sample line of a Prometheus page (`name` with its labels)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")
