"""Registered receivers on loopback: a real engine (Runtime) + Fanout + receiver endpoint, real reference
receivers (jitter buffer, libopus, SRTP), real UDP. Join, play, injection, spoofing, address
change, offline detection, failover, delivery report, RTCP."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest

from receivers.field import FieldReceiver, FieldSession
from receivers.output import NullSink
from receivers.receiver import Receiver, udp_socket
from streamer.mixer.arbitration import Level
from streamer.port import ReplaceZones, SetZoneLoss, StartBroadcast, ToneAudio
from streamer.rtp import control_protocol as cp
from streamer.rtp.fanout import Fanout
from streamer.rtp.link import start_receiver_endpoint
from streamer.rtp.packet import RtpPacket
from streamer.rtp.registry import ReceiverRegistry
from streamer.rtp.srtp import MediaKeyring
from streamer.runtime import Runtime
from streamer.zones import Zone
from tests.integration.conftest import until

pytestmark = pytest.mark.integration
SECRETS = {"rx1": (b"secret-one-0123456789", "z1"), "rx2": (b"secret-two-0123456789", "z1"),
           "rx3": (b"secret-three-01234567", "z2")}
HB = 0.3


class FieldServer:
    """The server side as control/app.py wires it (runtime with the SRTP keyring + fanout +
    endpoint)."""

    def __init__(self, secrets=SECRETS, zones=("z1", "z2"), srtp=True, host="127.0.0.1",
                 settings=None):
        self.settings = settings
        self.secrets = secrets
        self.zones = zones
        self.srtp = srtp
        self.host = host
        self.events: list[dict] = []

    async def start(self) -> FieldServer:
        self.raw_fanout = Fanout(bind=(self.host, 0))
        self.keyring = MediaKeyring(time.monotonic()) if self.srtp else None
        self.engine = Runtime(self.raw_fanout, self.settings, keyring=self.keyring)
        self.engine.submit(ReplaceZones(tuple(Zone(z) for z in self.zones)))
        self.engine.start()
        self.registry = ReceiverRegistry(self.secrets.get, on_event=self.events.append,
                                         on_zone_loss=lambda zone, perc: self.engine.submit(
                                             SetZoneLoss(zone, perc)),
                                         keyring=self.keyring, heartbeat_s=HB, report_s=0.4)
        self.link = await start_receiver_endpoint(self.engine, self.registry,
                                                  poll_interval=0.05, sr_interval=0.5)
        self.addr = self.raw_fanout.sock.getsockname()
        return self

    def tone(self, zones, seconds=3.0, freq=1000.0, level="normal"):
        return self.engine.submit(StartBroadcast(
            id="", targets=tuple(zones), level=Level.parse(level),
            source=ToneAudio(freq_hz=freq, seconds=seconds, amplitude_dbfs=-16.0)))

    def destinations(self, zone):
        """The zone's registered receivers as the fan-out has them (SRTP ones under `zone#s`)."""
        return self.raw_fanout.destinations(f"{zone}#s" if self.srtp else zone)

    def state(self, broadcast_id):
        return self.engine.broadcast(broadcast_id).state

    def stop(self) -> None:
        self.link.close()
        self.engine.stop()
        self.raw_fanout.close()


class FieldRx:
    def __init__(self, rid, servers, **kw):
        self.session = FieldSession(rid, SECRETS[rid][0], servers, register_retry_s=0.2,
                                    register_attempts=2, **kw)
        self.fr = FieldReceiver(self.session, Receiver(NullSink(), adaptive=True))
        self.stop_ev: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.addr = None

    def start(self, port=0):
        sock = udp_socket("127.0.0.1", port)
        self.addr = sock.getsockname()
        self.stop_ev = asyncio.Event()
        self.task = asyncio.ensure_future(self.fr.run(sock, duration=30, stop=self.stop_ev))
        return self

    async def stop(self):
        self.stop_ev.set()
        await asyncio.wait_for(self.task, 5)

    @property
    def audio_s(self):
        return self.fr.rx.sink.samples_written / 48000


async def test_join_play_injection_spoof_move_offline():
    srv = await FieldServer().start()
    rx = FieldRx("rx1", [srv.addr]).start()
    try:
        await until(lambda: rx.session.registered, 3, "registration")
        assert rx.session.srtp and rx.session.keys.ready
        # destination changes are applied in 20 ms batches
        await until(lambda: srv.destinations("z1") == [rx.addr], 1, "destination")
        srv.tone(["z1"], seconds=20)
        await until(lambda: rx.audio_s > 1.0, 5, "audio")
        snap = rx.fr.snapshot()
        assert snap["srtp_failed"] == 0 and snap["decode_errors"] == 0

        # an injected RTP packet with a valid-looking header, from the server's own address
        # (as an on-path attacker would spoof it) and from elsewhere: neither is played
        played_before = rx.fr.rx.jitter.stats.received
        ssrc, ts0, _, _ = srv.engine.rtp_clock()
        evil = RtpPacket(111, (srv.engine.rtp.seq + 2) & 0xFFFF, ts0, ssrc,
                         True, b"\xfc" + b"\x00" * 60).serialize()
        srv.raw_fanout.sock.sendto(evil, rx.addr)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        attacker.sendto(evil, rx.addr)
        await until(lambda: rx.fr.counters["auth_failed"] >= 1
                    and rx.fr.counters["foreign_source"] >= 1, 2, "injected packets dropped")
        assert rx.fr.rx.jitter.stats.received > played_before     # real media still flows

        # spoofed register for rx1 (guessed secret) from the attacker: nothing moves
        attacker.sendto(cp.encode(cp.MsgType.REGISTER, "rx1", b"guess",
                                  timestamp_ms=int(time.time() * 1000)), srv.addr)
        # and a replay of a genuine heartbeat captured earlier, from the attacker
        hb = cp.encode(cp.MsgType.HEARTBEAT, "rx1", SECRETS["rx1"][0],
                       timestamp_ms=int(time.time() * 1000) - 20_000)
        attacker.sendto(hb, srv.addr)
        await until(lambda: srv.registry.counters["bad_mac"] >= 1
                    and srv.registry.counters["replay"] >= 1, 5, "spoof counted")
        assert srv.destinations("z1") == [rx.addr]
        attacker.close()

        # the receiver's address changes (a 4G reconnect): the next heartbeat moves the stream
        await rx.stop()
        old = rx.addr
        rx.start()
        assert rx.addr != old
        a0 = rx.audio_s
        await until(lambda: srv.destinations("z1") == [rx.addr], 3, "move")
        await until(lambda: rx.audio_s > a0 + 1.0, 5, "audio after the move")
        assert any(e["type"] == "receiver.address_changed" for e in srv.events)
        st = srv.registry.status("rx1")
        assert st["address"] == f"{rx.addr[0]}:{rx.addr[1]}" and st["online"]
        # a report with jitter, a round trip (it needs a sender report first) and what plays:
        # they arrive in separate datagrams, so wait for all of them together
        await until(lambda: (srv.registry.status("rx1")["link"]["jitter_ms"] is not None
                             and srv.registry.status("rx1")["link"]["rtt_ms"] is not None
                             and (srv.registry.status("rx1").get("playing") or {}).get("level")
                             and rx.fr.counters["sender_reports"] >= 1),
                    5, "a receiver report with jitter, round trip and what plays")
        st = srv.registry.status("rx1")
        assert st["playing"]["level"] == "normal" and st["version"].startswith("loa-receiver")
        assert st["link"]["rtt_ms"] < 1000

        # silence: 3 missed heartbeats -> offline, removed from the destinations
        await rx.stop()
        await until(lambda: not srv.registry.status("rx1")["online"], 3 * HB + 2, "offline")
        await until(lambda: srv.destinations("z1") == [], 1, "removed")
        assert [e["receiver"] for e in srv.events if e["type"] == "receiver.offline"] == ["rx1"]
    finally:
        if not rx.task.done():
            await rx.stop()
        srv.stop()


async def test_delivery_report_full_partly_never_and_first_audio():
    srv = await FieldServer().start()
    rx1 = FieldRx("rx1", [srv.addr]).start()
    rx2 = None
    try:
        await until(lambda: rx1.session.registered, 3, "registration")
        b = srv.tone(["z1"], seconds=4.0)
        await asyncio.sleep(2.0)
        rx2 = FieldRx("rx2", [srv.addr]).start()          # joins half way through
        await until(lambda: srv.state(b.id) == "finished", 8, "the end")
        await asyncio.sleep(1.0)                           # last reports
        rep = srv.registry.delivery_report(srv.engine.broadcast(b.id).to_dict(),
                                           expected=[("rx1", "z1"), ("rx2", "z1"),
                                                     ("rx9", "z1")])
        rows = {r["receiver"]: r for r in rep["receivers"]}
        assert rows["rx1"]["outcome"] == "full", rep
        assert 0 <= rows["rx1"]["time_to_first_audio_s"] < 1.0, rep
        assert rows["rx2"]["outcome"] == "partly", rep
        assert 1.5 < rows["rx2"]["time_to_first_audio_s"] < 3.5, rep
        assert rows["rx9"]["outcome"] == "never"
    finally:
        await rx1.stop()
        if rx2:
            await rx2.stop()
        srv.stop()


async def test_failover_dead_first_server_then_live_server_dies():
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # bound, never answers
    dead.bind(("127.0.0.1", 0))
    a = await FieldServer().start()
    b = await FieldServer().start()
    rx = FieldRx("rx1", [dead.getsockname(), a.addr, b.addr]).start()
    try:
        await until(lambda: rx.session.registered and rx.session.server == a.addr, 3,
                    "failover past the dead server")
        a.tone(["z1"], seconds=20)
        b.tone(["z1"], seconds=20, freq=500)
        await until(lambda: rx.audio_s > 0.5, 5, "audio from A")
        a.stop()
        a0 = rx.audio_s
        await until(lambda: rx.session.server == b.addr and rx.session.registered,
                    3 * HB + 3, "failover to B")
        await until(lambda: rx.audio_s > a0 + 1.0, 5, "audio from B")
        assert rx.session.counters["server_lost"] == 1
        assert [e[1] for e in rx.session.events] == ["no answer", "registered", "server lost",
                                                     "registered"]
    finally:
        await rx.stop()
        b.stop()
        dead.close()
