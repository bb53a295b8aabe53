"""Origin → edge media path on loopback: a real engine (tick thread, Opus, RTP) at the origin
with an OriginFeed output, edges with their own media sockets, SRTP keyrings and receiver
endpoints, and the reference field receiver (real libopus and libsrtp) registered at an edge."""
from __future__ import annotations

import asyncio
import time

import pytest

from receivers.field import FieldReceiver, FieldSession
from receivers.output import NullSink
from receivers.receiver import Receiver, udp_socket
from streamer.cluster.edge import EdgeNode
from streamer.cluster.feed import OriginFeed
from streamer.core.engine import Level
from streamer.port import ReplaceZones, StartBroadcast, ToneAudio
from streamer.rtp.fanout import Fanout
from streamer.rtp.link import start_receiver_endpoint
from streamer.rtp.registry import ReceiverRegistry
from streamer.rtp.srtp import MediaKeyring
from streamer.runtime import Runtime
from streamer.zones import Zone

pytestmark = pytest.mark.integration

KEY = b"cluster-key-for-tests-0123456789"
SECRET = b"s" * 32


class Origin:
    def __init__(self, zones=("z1", "z2")) -> None:
        self.fanout = Fanout(bind=("127.0.0.1", 0))
        self.feed = OriginFeed(KEY, ("127.0.0.1", 0))
        self.rt = Runtime(self.fanout, outputs=[self.feed])
        self.feed.rtp = self.rt.rtp
        self.rt.submit(ReplaceZones(tuple(Zone(id=z, name=z) for z in zones), {}))
        self.feed.start()
        self.rt.start()

    def tone(self, zone: str, seconds: float = 30.0) -> None:
        self.rt.submit(StartBroadcast(id="", targets=(zone,), level=Level.NORMAL,
                                      source=ToneAudio(seconds=seconds)))

    def close(self) -> None:
        self.rt.stop()
        self.feed.close()
        self.fanout.close()


class Edge:
    def __init__(self, name: str, origin: Origin, secrets: dict) -> None:
        self.fanout = Fanout(bind=("127.0.0.1", 0))
        keyring = MediaKeyring(time.monotonic())
        self.node = EdgeNode(name, KEY, [origin.feed.address], self.fanout, keyring=keyring)
        self.registry = ReceiverRegistry(lambda rid: secrets.get(rid), keyring=keyring,
                                         heartbeat_s=1.0)
        self.link = None

    async def start(self) -> None:
        self.node.start()
        self.link = await start_receiver_endpoint(self.node, self.registry, poll_interval=0.1)

    @property
    def address(self):
        return ("127.0.0.1", self.link.address[1])

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None
        self.node.close()
        self.fanout.close()


class FieldRx:
    def __init__(self, rid: str, servers: list) -> None:
        self.session = FieldSession(rid, SECRET, servers, register_retry_s=0.5, heartbeat_s=1.0,
                                    missed=3)
        self.fr = FieldReceiver(self.session, Receiver(NullSink(), adaptive=True))
        self.sock = udp_socket("127.0.0.1", 0)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.fr.run(self.sock, duration=60, stop=self.stop))

    @property
    def received(self) -> int:
        return self.fr.rx.jitter.stats.received

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
        self.sock.close()


async def wait_until(pred, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


async def test_receiver_at_edge_plays_origin_programme():
    origin = Origin()
    edge = Edge("edge-a", origin, {"rx1": (SECRET, "z1")})
    await edge.start()
    rx = FieldRx("rx1", [edge.address])
    try:
        assert edge.node.wanted == frozenset()
        origin.tone("z1")
        origin.tone("z2")   # on air, but no edge wants z2: never sent to an edge
        await wait_until(lambda: rx.received >= 50, 10)    # a second of audio, decrypted
        assert edge.node.wanted == {"z1"}
        assert rx.session.srtp                           # keys from the edge, SRTP media
        st = rx.fr.snapshot()
        assert st["server"] == f"127.0.0.1:{edge.address[1]}"
        # the origin sent nothing to the receiver itself: one envelope per tick to the edge
        assert origin.fanout.stats()["sent"] == 0
        assert origin.feed.counters["envelopes"] >= 50
        # the receiver sees the origin's stream: same SSRC, and its numbers follow the origin's
        assert rx.fr.rx.jitter.ssrc == origin.rt.rtp.ssrc
        assert edge.node.assembler.duplicates == 0
        # envelopes carried only z1
        assert all(z == {"z1"} for _a, z in [(a, set(zz)) for a, zz in origin.feed.subs.targets])
        assert rx.fr.rx.stats.decode_errors == 0
    finally:
        await rx.close()
        edge.close()
        origin.close()


async def test_edge_pulls_a_zone_with_its_first_receiver_and_drops_it_with_the_last():
    origin = Origin()
    edge = Edge("edge-a", origin, {"rx1": (SECRET, "z1")})
    await edge.start()
    try:
        origin.tone("z1")
        await asyncio.sleep(1.5)
        assert origin.feed.subs.targets == ()      # subscribed to nothing: nothing sent
        assert origin.feed.counters["envelopes"] == 0
        rx = FieldRx("rx1", [edge.address])
        await wait_until(lambda: rx.received >= 10, 10)
        await rx.close()
        # the receiver is gone (no heartbeats): the edge's registry drops it (3 missed
        # heartbeats), the edge unsubscribes and the origin stops sending
        await wait_until(lambda: origin.feed.subs.targets == (), 10)
        sent = origin.feed.counters["envelopes"]
        await asyncio.sleep(0.5)
        assert origin.feed.counters["envelopes"] == sent
    finally:
        edge.close()
        origin.close()


async def test_receiver_moves_to_the_other_edge_when_its_edge_dies():
    origin = Origin()
    secrets = {"rx1": (SECRET, "z1")}
    a, b = Edge("edge-a", origin, secrets), Edge("edge-b", origin, secrets)
    await a.start()
    await b.start()
    rx = FieldRx("rx1", [a.address, b.address])
    try:
        origin.tone("z1", seconds=60)
        await wait_until(lambda: rx.received >= 25, 10)
        assert rx.session.server == a.address
        a.close()          # the edge disappears: no answers, no media
        before = rx.received
        took = await wait_until(lambda: rx.session.server == b.address
                                and rx.received >= before + 25, 10)
        assert took < 5.0, took
        assert b.node.wanted == {"z1"}
        # the same origin stream through another edge: the receiver's SSRC did not change
        assert rx.fr.rx.jitter.ssrc == origin.rt.rtp.ssrc
    finally:
        await rx.close()
        a.close()
        b.close()
        origin.close()
