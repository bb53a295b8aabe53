"""Zone changes made through the control API on the origin reach the edges through the commands
stream (control/cluster.py + streamer/cluster/zonesync.py), with real processes (`loa serve
--role origin|edge`) and a real redis-server on loopback: an edge that serves a zone
(LOA_SERVE_ZONES) sends its static destinations — set, changed and removed through PATCH, a zone
created with POST, deleted with DELETE — without a restart, and the origin stops sending what
the edge sends (a speaker never hears the programme twice). Every command carries the leader's
fencing token and is acknowledged by the edge's consumer group."""
from __future__ import annotations

import json
import socket
import urllib.request

import pytest
import redis as sync_redis

from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def _call(node, method: str, path: str, body: dict | None = None) -> int:
    req = urllib.request.Request(node.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


class Sink:
    """A fixed-address receiver: which ports its RTP comes from."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def senders(self, seconds: float) -> dict[int, int]:
        import time
        out: dict[int, int] = {}
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data, a = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if data and data[0] >> 6 == 2:
                out[a[1]] = out.get(a[1], 0) + 1
        return out

    def close(self) -> None:
        self.sock.close()


def test_zone_changes_through_the_api_reach_the_edges(cluster, redis_server):  # noqa: F811
    (pe,) = free_udp_ports(1)
    origin = cluster("origin-1", "origin")
    edge = cluster("edge-lan", "edge", {"LOA_SEND_PORT": str(pe),
                                        "LOA_SERVE_ZONES": '["xa-nhon-ly", "thon-2"]'})
    red = sync_redis.Redis.from_url(redis_server.url)
    fence = int(red.get("loa:lease:leader:fence"))
    a, b = Sink(), Sink()
    try:
        st, _bc = origin.post("/api/v1/broadcasts", {
            "zones": ["xa-nhon-ly"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 600, "seconds": 120}})
        assert st == 201
        # a fixed receiver added to the zone through the API: the edge sends to it, not the
        # origin (the edge is on its LAN)
        assert _call(origin, "PATCH", "/api/v1/zones/xa-nhon-ly", {"unicast": [a.addr]}) == 200
        wait_for("the edge serves the zone", lambda: "xa-nhon-ly" in edge.get("/health")[1]
                 ["zones"], 10)
        wait_for("the edge's packets", lambda: pe in a.senders(0.5), 10)
        got = a.senders(2.0)
        assert set(got) == {pe} and got[pe] >= 80, got      # the origin sends none of them
        # changed: the edge's destination moves with it, without a restart
        assert _call(origin, "PATCH", "/api/v1/zones/xa-nhon-ly", {"unicast": [b.addr]}) == 200
        wait_for("moved to b", lambda: pe in b.senders(0.5), 10)
        a.senders(0.5)
        assert a.senders(1.0) == {}
        # a zone created through the API, under it: its static destination is the edge's too
        st = origin.post("/api/v1/zones", {"id": "thon-2", "name": "Thôn 2",
                                           "parent": "xa-nhon-ly", "unicast": [a.addr]})[0]
        assert st == 201
        wait_for("the new zone at the edge", lambda: pe in a.senders(0.5), 10)
        # deleted: every edge drops it, nothing is sent to its destination any more
        assert _call(origin, "DELETE", "/api/v1/zones/thon-2") == 200
        wait_for("dropped at the edge", lambda: "thon-2" not in edge.get("/health")[1]["zones"],
                 10)
        a.senders(0.5)
        assert a.senders(1.0) == {}
        # removed: the zone's destinations emptied at the edge
        assert _call(origin, "PATCH", "/api/v1/zones/xa-nhon-ly", {"unicast": []}) == 200
        wait_for("nothing to b", lambda: b.senders(0.5) == {}, 10)
        # through the stream with the leader's token, read and acknowledged by the edge
        entries = red.xrange("loa:commands")
        zone_cmds = [f for _i, f in entries if f[b"kind"] in (b"zone.set", b"zone.drop")]
        assert len(zone_cmds) >= 4 and {int(f[b"fence"]) for f in zone_cmds} == {fence}
        assert {f[b"kind"] for f in zone_cmds} == {b"zone.set", b"zone.drop"}
        wait_for("acknowledged", lambda: red.xpending("loa:commands", "edge:edge-lan")
                 ["pending"] == 0, 5)
        h = edge.get("/health")[1]
        assert h["commands_refused"] == 0 and h["commands_unknown"] == 0, h
    finally:
        a.close()
        b.close()


def test_the_origin_sends_static_destinations_no_edge_serves(cluster, redis_server):  # noqa: F811
    """No edge serves the zone: the origin sends to its fixed receiver itself, once."""
    origin = cluster("origin-1", "origin")
    cluster("edge-x", "edge", {"LOA_SERVE_ZONES": '["another-zone"]'})
    a = Sink()
    try:
        assert _call(origin, "PATCH", "/api/v1/zones/xa-nhon-ly", {"unicast": [a.addr]}) == 200
        origin.post("/api/v1/broadcasts", {"zones": ["xa-nhon-ly"], "level": "normal",
                                           "source": {"kind": "tone", "seconds": 30}})
        wait_for("packets", lambda: a.senders(0.5) != {}, 10)
        got = a.senders(2.0)
        assert len(got) == 1 and sum(got.values()) >= 80, got
    finally:
        a.close()
