"""The edge's fence on media (streamer/cluster/edge.py, streamer/cluster/lease.FenceGate): an
envelope from an origin whose fencing token is older than the newest the edge has seen (from
envelopes or commands) is not played, so an origin paused past its lease that wakes up still
sending cannot air in parallel with the new leader. Real EdgeNode, Fanout and a UDP sink on
loopback; the envelopes are made with the cluster key as origins make them."""
from __future__ import annotations

import socket
import time

import pytest

from streamer.cluster.edge import EdgeNode
from streamer.cluster.envelope import Programme, pack_tick
from streamer.cluster.lease import FenceGate
from streamer.rtp.fanout import Fanout

pytestmark = pytest.mark.integration

KEY = b"cluster-key-for-tests-0123456789"
OLD, NEW = ("127.0.0.1", 40001), ("127.0.0.1", 40002)   # two origins (addresses only)


def _env(fence: int, k: int, ssrc: int, payload: bytes) -> bytes:
    [d] = pack_tick(KEY, k, k, k * 960, ssrc, int(time.time() * 1000),
                    [Programme(payload, ("z",))], fence=fence)
    return d


def test_media_with_an_older_token_is_refused():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(2)
    fanout = Fanout(bind=("127.0.0.1", 0))
    gate = FenceGate()
    node = EdgeNode("edge-t", KEY, [OLD, NEW], fanout, gate=gate)
    try:
        node.set_static("z", None, [("127.0.0.1", sink.getsockname()[1])])

        def play(origin, fence, k, ssrc, payload):
            node.datagram_received(_env(fence, k, ssrc, payload), origin, time.monotonic(),
                                   time.time())

        def heard() -> bytes | None:
            try:
                return sink.recvfrom(2048)[0]
            except TimeoutError:
                return None

        play(OLD, 100, 1, 0xA, b"old-leader")
        assert heard().endswith(b"old-leader")
        play(NEW, 101, 1, 0xB, b"new-leader")        # a takeover: a higher token
        assert heard().endswith(b"new-leader")
        sink.settimeout(0.3)
        for k in range(2, 6):                        # the old one wakes up and sends on
            play(OLD, 100, k, 0xA, b"old-leader")
        assert heard() is None
        assert gate.media_refused == 4 and node.stats()["media_refused"] == 4
        assert node.counters["ticks"] == 2
        play(NEW, 101, 2, 0xB, b"new-leader")        # the leader's media plays on
        sink.settimeout(2)
        assert heard().endswith(b"new-leader")
        # one newest token for media and commands: the old one's commands are refused too
        assert gate.highest == 101 and not gate.admit(100) and gate.refused == 1
        # and a command with a newer token fences the media of the current one
        assert gate.admit(102)
        sink.settimeout(0.3)
        play(NEW, 101, 3, 0xB, b"new-leader")
        assert heard() is None and gate.media_refused == 5
    finally:
        node.close()
        fanout.close()
        sink.close()
