"""A provisioned receiver in the field, end to end through a real `loa serve`.

Provision over the API, run `loa receiver --server ... --id ... --secret <what the API gave>` as a
process, see it come online with its address, play a 1 kHz tone to its zone, check the WAV it
wrote (pitch) and the delivery report (played), stop it and see it go offline (as-run log,
metrics). A stock RTP client (a static unicast destination in the same zone) receives plain RTP
at the same time while the registered receiver gets SRTP.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import numpy as np
import pytest

from streamer.rtp.opus import OpusDecoder
from streamer.rtp.packet import RtpPacket
from tests.integration.conftest import read_wav, tone_stats
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

TOML = """
[[zones]]
id = "tinh-bd"
name = "Tỉnh Bình Định"

[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
parent = "tinh-bd"
unicast = ["127.0.0.1:{port}"]
"""
HEARTBEAT_S = 1.0


class Sink:
    """A stock RTP client: one UDP socket, every datagram kept (bounded by the test's length)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.packets.append(data)

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def receiver_live(server, rid: str) -> dict:
    st, body = server.request("GET", "/api/v1/receivers")
    assert st == 200, body
    return next(r for r in body["receivers"] if r["id"] == rid)["live"]


def explain_not_online(server, rid: str, secret: str, log: str) -> str:
    _, ev = server.request("GET", "/api/v1/asrun?type=receiver.rejected")
    rej = [e for e in ev.get("events", []) if e.get("receiver") == rid]
    msg = f"receiver {rid} never came online. receiver.rejected events: {rej}. receiver log:\n{log}"
    if any(e.get("reason") == "bad_mac" for e in rej):
        msg = ("BUG: the provisioning API and `loa receiver` disagree on the secret's encoding. "
               f"POST /api/v1/receivers returned secret={secret!r}, unpadded URL-safe base64 of "
               "32 random bytes (control/service.py provision_receiver: auth._b64(secret)), and "
               "the server verifies HMACs with those raw 32 bytes (LoaApp.receiver_secrets via "
               "SecretBox.open); but receivers/cli.py _field_settings uses "
               "str(secret).encode(), i.e. the UTF-8 bytes of the base64 text, so every "
               "message the receiver signs is rejected as bad_mac. " + msg)
    return msg


def test_provisioned_receiver_end_to_end(serve, receivers, tmp_path):
    sink = Sink()
    try:
        _run(serve, receivers, tmp_path, sink)
    finally:
        sink.close()


def _run(serve, receivers, tmp_path, sink: Sink) -> None:
    t0 = time.monotonic()
    server = serve(TOML.format(port=sink.port), env={"LOA_RECEIVER_HEARTBEAT_S": str(HEARTBEAT_S)})
    st, health = server.request("GET", "/api/v1/health")
    port = health["receiver_port"]
    assert port > 0

    st, rx = server.request("POST", "/api/v1/receivers",
                            {"zone": "xa-nhon-ly", "name": "Loa chợ Nhơn Lý"})
    assert st == 201, rx
    rid, secret = rx["id"], rx["secret"]
    assert receiver_live(server, rid)["state"] == "never"

    # the receiver CLI, given exactly what the provisioning API returned
    # `--secret=` form: a URL-safe base64 secret starts with "-" one time in 64, and argparse
    # would take `--secret -xyz...` for a missing value
    r = receivers(["--server", f"127.0.0.1:{port}", "--id", rid, f"--secret={secret}",
                   "--stats-interval", "1"], "field")

    def online():
        live = receiver_live(server, rid)
        return live if live["state"] == "online" and live.get("address") else None
    try:
        live = wait_for("the receiver to come online", online, timeout=10)
    except AssertionError:
        r.stop()
        pytest.fail(explain_not_online(server, rid, secret, r.text))
    t_online = time.monotonic()
    # the address the server saw is the receiver's own media socket
    m = re.search(r"on udp [\d.]+:(\d+)", _log(r))
    assert m, _log(r)
    assert live["address"] == f"127.0.0.1:{m.group(1)}", (live, _log(r))
    st, body = server.request("GET", "/api/v1/receivers?zone=tinh-bd&live=online")
    assert [x["id"] for x in body["receivers"]] == [rid]
    st, metrics = server.request("GET", "/metrics")
    assert re.search(r'loa_receivers_online\{zone="xa-nhon-ly"\} 1(\.0)?\b', metrics), metrics

    # a 1 kHz tone to the zone: SRTP to the registered receiver, plain RTP to the static one
    n_before = len(sink.packets)
    st, b = server.request("POST", "/api/v1/broadcasts",
                           {"zones": ["xa-nhon-ly"], "level": "priority",
                            "source": {"kind": "tone", "freq_hz": 1000, "seconds": 3}})
    assert st == 201, b
    done = server.wait_state(b["id"], timeout=15)
    assert done["state"] == "finished", done

    def delivered():
        st, rep = server.request("GET", f"/api/v1/broadcasts/{b['id']}/delivery")
        assert st == 200, rep
        row = next((x for x in rep["receivers"] if x["receiver"] == rid), None)
        # the first report can come as the audio starts; wait for the one after the end
        return rep if (row and row["outcome"] in ("full", "partly")
                       and row["audio_s"] >= 2.5) else None
    rep = wait_for("the delivery report to list the receiver as played", delivered, timeout=12,
                   interval=0.25)
    row = next(x for x in rep["receivers"] if x["receiver"] == rid)
    assert 0 <= row["time_to_first_audio_s"] < 1.5, row
    assert row["audio_s"] <= 3.5, row
    print(f"\ndelivery: {row}")
    live = receiver_live(server, rid)
    assert live["link"]["quality"] in ("good", "fair", "poor"), live

    # stop the receiver; with 1 s heartbeats it is offline after 3 missed
    text = r.stop()
    t_stopped = time.monotonic()
    stats = json.loads(r.stats.read_text())
    assert stats["registered"] is True and stats["srtp"] is True, stats
    assert stats["auth_failed"] == 0 and stats.get("plain_rejected", 0) == 0, stats
    x, rate = read_wav(r.out)
    freq, secs, _ = tone_stats(x, rate)
    assert abs(freq - 1000.0) <= 5.0, (freq, text)
    assert secs >= 2.5, (secs, text)

    def offline_event():
        st, ev = server.request("GET", "/api/v1/asrun?type=receiver.offline")
        return [e for e in ev.get("events", []) if e.get("receiver") == rid]
    ev = wait_for("a receiver.offline event", offline_event, timeout=3 * HEARTBEAT_S + 6,
                  interval=0.2)
    t_offline = time.monotonic()
    assert ev[0]["zone"] == "xa-nhon-ly" and "heartbeat" in ev[0]["reason"], ev
    assert receiver_live(server, rid)["state"] == "offline"
    st, metrics = server.request("GET", "/metrics")
    assert re.search(r'loa_receivers_online\{zone="xa-nhon-ly"\} 0(\.0)?\b', metrics), metrics
    st, body = server.request("GET", "/api/v1/receivers?live=offline")
    assert [x["id"] for x in body["receivers"]] == [rid]

    # the stock client: plain RTP (a normal header, Opus that decodes) carrying the same tone
    pkts = []
    for data in sink.packets[n_before:]:
        p = RtpPacket.parse(data)
        assert p.payload_type == 111, p
        pkts.append(p)
    assert len(pkts) >= 140, len(pkts)          # 3 s at 50 packets/s (a little slack)
    seq0 = pkts[0].sequence_number
    pkts.sort(key=lambda p: (p.sequence_number - seq0) & 0xFFFF)
    dec = OpusDecoder(channels=1)
    pcm = np.concatenate([dec.decode(p.payload) for p in pkts])
    dec.close()
    freq, secs, _ = tone_stats(pcm, 48000)
    assert abs(freq - 1000.0) <= 5.0, freq
    assert secs >= 2.5, secs
    print(f"\ntimings: start->online {t_online - t0:.2f} s, stop->offline event "
          f"{t_offline - t_stopped:.2f} s, total {time.monotonic() - t0:.2f} s")


def _log(r) -> str:
    r.logf.flush()
    r.logf.seek(0)
    text = r.logf.read().decode(errors="replace")
    r.logf.seek(0, 2)
    return text
