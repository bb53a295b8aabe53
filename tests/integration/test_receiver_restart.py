"""A server restart never silences the field receivers (issue 13, finding 1).

A real `loa serve` with SRTP, a registered receiver (the reference `FieldReceiver` with real
libopus and libsrtp, in a thread of this process so the test can see its counters), a tone on
air; then the server is killed with SIGKILL (or stopped cleanly) and started again on the same
data directory and media port. The receiver must play again within one heartbeat interval + 2 s
of the new server answering, with nothing done to it.

Before the kill the receiver is *aged*: one packet under the server's own media key in era
`AGED_ERA` (what a server that had been up for ~27 hours sends: an era is 16384 packets, 5.5
minutes) is delivered to it as if from the server. A test cannot wait a day; without this, the
old server's eras (0-4 after a few seconds) would only sometimes be ahead of the new server's.
"""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pylibsrtp
import pytest

from receivers.cli import decode_secret
from receivers.field import FieldReceiver, FieldSession
from receivers.output import NullSink
from receivers.receiver import Receiver, udp_socket
from streamer.rtp.packet import RtpPacket
from streamer.rtp.srtp import TRAILER, derive_master
from tests.integration.conftest import free_udp_ports, wait_for

pytestmark = pytest.mark.integration

HEARTBEAT_S = 3.0
AGED_ERA = 300
TOML = """
[[zones]]
id = "xa-nhon-ly"
name = "Xã Nhơn Lý"
"""


class ThreadedReceiver:
    """A FieldReceiver on its own event loop thread (the test's HTTP calls block)."""

    def __init__(self, rid: str, secret: bytes, server: tuple[str, int]) -> None:
        self.session = FieldSession(rid, secret, [server], register_retry_s=0.5)
        self.fr = FieldReceiver(self.session, Receiver(NullSink(), adaptive=True))
        self.sock = udp_socket("127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        self.stop_ev: asyncio.Event | None = None
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def go():
            self.stop_ev = asyncio.Event()
            return await self.fr.run(self.sock, duration=120, stop=self.stop_ev)
        self.result = self.loop.run_until_complete(go())

    def call(self, fn, *args):
        """Run fn(*args) on the receiver's loop thread and return its result."""
        done = threading.Event()
        box = []

        def run() -> None:
            try:
                box.append(fn(*args))
            finally:
                done.set()
        self.loop.call_soon_threadsafe(run)
        assert done.wait(5), "receiver loop did not answer"
        return box[0]

    @property
    def decoded(self) -> int:
        """Media packets that authenticated and reached the jitter buffer."""
        return self.fr.rx.jitter.stats.received

    def stop(self) -> None:
        if self.thread.is_alive() and self.stop_ev is not None:
            self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(10)
        self.sock.close()


def aged_packet(key: bytes, kid: int, era: int) -> bytes:
    """A packet as the sender builds it (slot 0) under `key` in `era`."""
    seq = ((era << 14) | 7) & 0xFFFF
    plain = RtpPacket(111, seq, 12345, 0x5EED, False, b"\xfc" + b"\x00" * 40).serialize()
    s = pylibsrtp.Session(pylibsrtp.Policy(
        key=derive_master(key, kid, 0, era), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    return s.protect(plain) + TRAILER.pack(kid, 0, era)


def live(server, rid: str) -> dict:
    st, body = server.request("GET", f"/api/v1/receivers/{rid}")
    assert st == 200, body
    return body["live"]


def tone(server, seconds: float = 60.0) -> str:
    st, b = server.request("POST", "/api/v1/broadcasts",
                           {"zones": ["xa-nhon-ly"], "level": "normal",
                            "source": {"kind": "tone", "freq_hz": 1000, "seconds": seconds}})
    assert st == 201, b
    return b["id"]


@pytest.mark.parametrize("how", ["kill -9", "clean"])
def test_receiver_plays_again_after_server_restart(serve, tmp_path, how):
    media_port = free_udp_ports(1)[0]
    env = {"LOA_RECEIVER_HEARTBEAT_S": str(HEARTBEAT_S), "LOA_SEND_PORT": str(media_port)}
    server = serve(TOML, env=env)
    st, rx = server.request("POST", "/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
    assert st == 201, rx
    rid = rx["id"]
    r = ThreadedReceiver(rid, decode_secret(rx["secret"]), ("127.0.0.1", media_port))
    try:
        wait_for("registration", lambda: r.session.registered and r.session.keys.ready, 10)
        assert r.session.heartbeat_s == HEARTBEAT_S
        tone(server)
        wait_for("audio from the first server", lambda: r.decoded > 50, 10)
        assert live(server, rid)["state"] == "online"

        # the server goes away
        t_down = time.monotonic()
        if how == "kill -9":
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)
        server.stop()
        os.replace(tmp_path / "serve.log", tmp_path / "serve.first.log")

        # it had been up for a day: the receiver last heard era AGED_ERA under its key
        keys = dict(r.session.keys._keys)
        failed0 = r.fr.counters["auth_failed"]
        for kid, key in keys.items():
            r.call(r.fr.datagram_received, aged_packet(key, kid, AGED_ERA), r.session.server,
                   time.monotonic(), time.time())
        assert r.fr.counters["auth_failed"] == failed0, "the aged packet must authenticate"

        # the same data directory and media port
        server2 = serve(TOML, env=env)
        t_up = time.monotonic()
        tone(server2)
        base = r.decoded
        failed_before = r.fr.counters["auth_failed"]
        try:
            wait_for("the receiver to play again", lambda: r.decoded >= base + 25,
                     HEARTBEAT_S + 2.0, interval=0.02)
        except AssertionError:
            pytest.fail(f"no media decoded within {HEARTBEAT_S + 2.0} s of the restart "
                        f"({how}); auth_failed {failed_before} -> {r.fr.counters['auth_failed']}, "
                        f"unprotector failures {getattr(r.session.keys, 'failures', None)}, "
                        f"session {r.session.counters}")
        recovered = time.monotonic() - t_up
        # it keeps playing, with no authentication failures
        f1, d1 = r.fr.counters["auth_failed"], r.decoded
        time.sleep(1.0)
        assert r.fr.counters["auth_failed"] == f1, r.fr.counters
        assert r.decoded >= d1 + 40, (r.decoded, d1)
        # and the server says so (the next report)
        lv = wait_for("the restarted server to show it playing",
                      lambda: (lambda x: x if (x.get("playback") or {}).get("state") == "playing"
                               else None)(live(server2, rid)), 12, interval=0.25)
        assert lv["state"] == "online" and lv["link"]["quality"] is not None, lv
        print(f"\n{how}: down->up {t_up - t_down:.2f} s, up->playing again {recovered:.2f} s "
              f"(heartbeat {HEARTBEAT_S} s), session {r.session.counters}, "
              f"auth_failed during the switch {f1 - failed_before}")
    finally:
        r.stop()
