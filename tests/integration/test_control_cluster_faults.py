"""The issue's Redis faults through real processes (`loa serve --role origin|edge`, a real
redis-server on loopback, the reference receiver): while a programme plays through an edge,
- Redis is stalled 5 s (`DEBUG SLEEP 5`), restarted empty (persistence off), and then stopped
  for good (the origin and the edge are cut off from it): the receiver loses no packet, never
  conceals, never fails over;
- the lease holder is stopped with SIGSTOP past its lease: the other origin takes the lease
  (a higher token) and carries the programme on; after SIGCONT the stale one knows it no
  longer leads, sends no media, and a command carrying its token is refused by the edge."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
import redis as sync_redis

from receivers.cli import decode_secret
from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import cluster  # noqa: F401  (fixture)
from tests.integration.test_receiver_restart import ThreadedReceiver

pytestmark = pytest.mark.integration


def _playing(origin, edge, receiver_port):
    st, rx = origin.post("/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
    assert st == 201
    wait_for("the secret at the edge", lambda: edge.get("/health")[1]["secrets"] >= 1, 10)
    r = ThreadedReceiver(rx["id"], decode_secret(rx["secret"]), ("127.0.0.1", receiver_port))
    wait_for("registration", lambda: r.session.registered, 10)
    st, bc = origin.post("/api/v1/broadcasts", {
        "zones": ["xa-nhon-ly"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 700, "seconds": 120}})
    assert st == 201
    wait_for("audio", lambda: r.decoded > 50, 10)
    return r, bc


def _steady(r, seconds: float) -> None:
    """`seconds` of uninterrupted audio: ~50 packets a second, at most 2 lost or concealed."""
    j = r.fr.rx.jitter.stats
    before = (j.received, j.lost, j.concealed_plc, r.session.counters["failovers"])
    time.sleep(seconds)
    j = r.fr.rx.jitter.stats
    got = j.received - before[0]
    assert got >= 45 * seconds, (got, j)
    # a speaker silenced by a stall or a failover loses hundreds of packets; one or two packets
    # late on a loaded 2-core machine (seen in CI: one concealed, late=1) are not that
    assert (j.lost - before[1]) + (j.concealed_plc - before[2]) <= 2, (before, j)
    assert r.session.counters["failovers"] == before[3], j


def test_redis_stalled_restarted_and_gone_the_speakers_play_on(cluster, redis_server):  # noqa: F811
    (pe,) = free_udp_ports(1)
    origin = cluster("origin-1", "origin")
    edge = cluster("edge-a", "edge", {"LOA_SEND_PORT": str(pe)})
    r, _bc = _playing(origin, edge, pe)
    try:
        _steady(r, 1.0)
        stall = redis_server.stall(5)                # DEBUG SLEEP 5
        _steady(r, 5.5)
        stall.wait(10)
        redis_server.restart()                       # empty: persistence is off
        _steady(r, 4.0)
        red = sync_redis.Redis.from_url(redis_server.url)
        wait_for("the node registry back by itself", lambda: red.exists("loa:node:edge-a")
                 and red.exists("loa:node:origin-1"), 10)
        wait_for("what is on air back in Redis", lambda: red.scard("loa:onair") == 1, 5)
        redis_server.kill()                          # cut off from Redis for good
        _steady(r, 6.0)
        assert edge.get("/health")[1]["ok"] and origin.get("/api/v1/health")[0] == 200
    finally:
        r.stop()


def test_a_stopped_lease_holder_is_taken_over_and_refused_after_waking(cluster, redis_server):  # noqa: F811
    (pe,) = free_udp_ports(1)
    a = cluster("origin-a", "origin")
    b = cluster("origin-b", "origin")
    edge = cluster("edge-a", "edge", {"LOA_SEND_PORT": str(pe)})
    red = sync_redis.Redis.from_url(redis_server.url)
    r, bc = _playing(a, edge, pe)
    try:
        old = int(red.get("loa:lease:leader:fence"))
        wait_for("the start at the edge", lambda: edge.get("/health")[1]["fence"] == old, 5)
        # a's stream as the receiver knows it, read before a stops: b's first packets can reach
        # the receiver before b's health answers that it leads (CI saw the SSRC read after the
        # switch and wait for a change that had already happened)
        ssrc = r.fr.rx.jitter.ssrc
        os.killpg(a.proc.pid, signal.SIGSTOP)        # past its lease (6 s)
        try:
            base = r.decoded
            wait_for("b leads", lambda: b.get("/api/v1/health")[1]["cluster"]["leader"], 10)
            new = int(red.get("loa:lease:leader:fence"))
            assert new > old
            wait_for("b's programme at the receiver", lambda: r.fr.rx.jitter.ssrc != ssrc
                     and r.decoded > base + 25, 10)
            assert b.get("/api/v1/health")[1]["cluster"]["on_air"] == [bc["id"]]
            wait_for("the edge saw b's token", lambda: edge.get("/health")[1]["fence"] == new,
                     5)
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        # the stale one learns it lost the lease: no media from it, no commands issued
        wait_for("a knows", lambda: a.get("/api/v1/health")[1]["cluster"]["feed_enabled"]
                 is False, 5)
        ca = a.get("/api/v1/health")[1]["cluster"]
        assert ca["leader"] is False
        # and it stops what it aired as leader (b carries it on): nothing on air at a, the
        # transition logged and evented with who leads now
        wait_for("a stopped it", lambda: a.get(f"/api/v1/broadcasts/{bc['id']}")[1]["state"]
                 != "playing", 5)
        ca = a.get("/api/v1/health")[1]["cluster"]
        assert ca["standing"] == "follower" and bc["id"] in ca["yielded"], ca
        (t,) = [x for x in ca["transitions"] if x["standing"] == "follower"]
        assert t["leader"] == "origin-b" and t["stopped"] == [bc["id"]], t
        assert "leader -> follower" in a.output() or "unsure -> follower" in a.output()
        assert b.get("/api/v1/health")[1]["cluster"]["standing"] == "leader"
        # its envelopes sent after waking, if any, were refused by their old token
        print("\nstale media refused at the edge:", edge.get("/health")[1]["media_refused"])
        refused = edge.get("/health")[1]["commands_refused"]
        # what it would send now carries its old token: the edge refuses it
        red.xadd("loa:commands", {"fence": str(old), "kind": "zone.drop", "issuer": "origin-a",
                                  "body": json.dumps({"zone": "xa-nhon-ly"})})
        wait_for("refused", lambda: edge.get("/health")[1]["commands_refused"] == refused + 1,
                 5)
        assert edge.get("/health")[1]["zones"] == ["xa-nhon-ly"]
        _steady(r, 2.0)                              # b's programme plays on
        assert r.fr.rx.jitter.ssrc != ssrc
    finally:
        r.stop()


def test_an_origin_missing_from_the_registry_for_a_while_is_still_played(cluster, redis_server):  # noqa: F811
    """After an empty Redis restart the origins write their hashes again one after the other;
    an edge that read the registry in between took the one listed (a standby, say) for all of
    them and dropped the leader's envelopes as foreign until its next read: a CI run lost 2 s
    of a zone. Here the registry lists only another origin for 5 s (the leader's hash deleted
    as fast as it writes it): the receiver plays on."""
    import threading
    (pe,) = free_udp_ports(1)
    origin = cluster("origin-1", "origin")
    edge = cluster("edge-a", "edge", {"LOA_SEND_PORT": str(pe)})
    r, _bc = _playing(origin, edge, pe)
    red = sync_redis.Redis.from_url(redis_server.url)
    stop = threading.Event()

    def only_the_other() -> None:
        while not stop.is_set():
            pipe = red.pipeline()
            pipe.delete("loa:node:origin-1")
            pipe.zrem("loa:nodes:origin", "origin-1")
            pipe.hset("loa:node:origin-x", mapping={"node": "origin-x", "role": "origin",
                                                     "feed": "127.0.0.1:9",
                                                     "at": f"{time.time():.3f}"})
            pipe.zadd("loa:nodes:origin", {"origin-x": int((time.time() + 6) * 1000)})
            pipe.execute()
            stop.wait(0.02)

    t = threading.Thread(target=only_the_other, daemon=True)
    try:
        _steady(r, 1.0)
        t.start()
        _steady(r, 5.0)          # the edge reads the registry twice meanwhile
        h = edge.get("/health")[1]
        assert h["ok"], h
    finally:
        stop.set()
        t.join(5)
        r.stop()
