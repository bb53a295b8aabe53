"""A file plays on reference receivers over unicast and multicast (loopback only, TTL 0)."""
import time

import pytest

from streamer.ingest.tones import write_tone_wav
from tests.integration.conftest import free_udp_ports, read_wav, tone_stats

pytestmark = pytest.mark.integration


def check_tone(path, seconds=3.0):
    x, rate = read_wav(path)
    freq, dur, _ = tone_stats(x, rate)
    assert abs(freq - 1000) < 5, freq
    assert abs(dur - seconds) < 0.1, dur


def wait_listening(rx, timeout=10.0):
    # the receiver prints its address once bound
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rx.logf.flush()
        rx.logf.seek(0)
        if b"listening" in rx.logf.read() or rx.proc.poll() is not None:
            return
        time.sleep(0.05)


def test_tone_file_reaches_two_unicast_receivers(serve, receivers, tmp_path):
    p1, p2 = free_udp_ports(2)
    srv = serve(f'[[zones]]\nid = "xa-nhon-ly"\nname = "Xã Nhơn Lý"\n'
                f'unicast = ["127.0.0.1:{p1}", "127.0.0.1:{p2}"]\n')
    r1 = receivers(["--listen", f"127.0.0.1:{p1}"], "r1")
    r2 = receivers(["--listen", f"127.0.0.1:{p2}"], "r2")
    wait_listening(r1)
    wait_listening(r2)
    tone = tmp_path / "tone.mp3"
    from tests.conftest import make_tone_file
    make_tone_file(tone, 1000, 3.0, rate=44100, channels=2, fmt="mp3")
    st, b = srv.request("POST", "/api/v1/broadcasts",
                        {"zones": ["xa-nhon-ly"], "level": "normal",
                         "source": {"kind": "file", "path": str(tone)}})
    assert st == 201, b
    assert b["id"] and b["reached_zones"] == ["xa-nhon-ly"]
    done = srv.wait_state(b["id"], timeout=15)
    assert done["state"] == "finished" and not done["error"]
    time.sleep(0.4)
    for r in (r1, r2):
        out = r.stop()
        assert "received" in out
        check_tone(r.out)
    st, log = srv.request("GET", f"/api/v1/asrun?broadcast={b['id']}")
    assert [e["type"] for e in log["events"]] == ["broadcast.created", "broadcast.started",
                                                  "broadcast.finished"]


def test_multicast_receiver_gets_the_tone_without_leaving_the_machine(serve, receivers, tmp_path):
    port = free_udp_ports(1)[0]
    group = "239.255.20.1"
    # TTL 0 + loopback interface: the datagrams are looped back locally and never sent out
    srv = serve(f'multicast_ttl = 0\nmulticast_if = "127.0.0.1"\n'
                f'[[zones]]\nid = "z"\nmulticast = "{group}:{port}"\n')
    rx = receivers(["--multicast", f"{group}:{port}", "--interface", "127.0.0.1"], "mc")
    wait_listening(rx)
    tone = tmp_path / "tone.wav"
    write_tone_wav(tone, 1000, 3.0, rate=22050)
    st, b = srv.request("POST", "/api/v1/broadcasts",
                        {"zones": ["z"], "source": {"kind": "file", "path": str(tone)}})
    assert st == 201, b
    srv.wait_state(b["id"], timeout=15)
    time.sleep(0.4)
    rx.stop()
    check_tone(rx.out)
    st, sdp = srv.request("GET", "/api/v1/zones/z/sdp")
    assert f"c=IN IP4 {group}/1" in sdp and f"m=audio {port} RTP/AVP 111" in sdp
