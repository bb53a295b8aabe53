"""ffmpeg, which no one here wrote, plays a zone's SDP from the API and hears the tone."""
import signal
import subprocess
import time

import pytest

from streamer.ingest.tones import write_tone_wav
from tests.conftest import require_tool
from tests.integration.conftest import free_udp_ports, read_wav, tone_stats

pytestmark = pytest.mark.integration


def start_ffmpeg(sdp_path, out):
    return subprocess.Popen(
        [require_tool("ffmpeg", "an RTP client no one here wrote"), "-hide_banner", "-loglevel", "error", "-nostdin", "-protocol_whitelist",
         "file,udp,rtp", "-i", str(sdp_path), "-ac", "1", "-ar", "48000", "-y", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def stop_ffmpeg(p):
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    return p.stderr.read().decode(errors="replace")


def test_ffmpeg_plays_zone_sdp(serve, tmp_path):
    port = free_udp_ports(1)[0] & ~1 or 40000
    srv = serve(f'[[zones]]\nid = "z"\nunicast = ["127.0.0.1:{port}"]\n')
    st, sdp = srv.request("GET", "/api/v1/zones/z/sdp")
    assert st == 200
    sdp_path = tmp_path / "z.sdp"
    sdp_path.write_text(sdp)
    out = tmp_path / "ffmpeg.wav"
    ff = start_ffmpeg(sdp_path, out)
    time.sleep(1.0)  # let ffmpeg bind its port
    tone = tmp_path / "tone.wav"
    write_tone_wav(tone, 1000, 3.0)
    st, b = srv.request("POST", "/api/v1/broadcasts",
                        {"zones": ["z"], "source": {"kind": "file", "path": str(tone)}})
    assert st == 201, b
    srv.wait_state(b["id"], timeout=15)
    time.sleep(0.5)
    err = stop_ffmpeg(ff)
    assert out.exists(), err
    x, rate = read_wav(out)
    freq, dur, _ = tone_stats(x, rate)
    assert abs(freq - 1000) < 5, (freq, err)
    assert abs(dur - 3.0) < 0.15, dur
