"""A standby origin goes on air before it can open the database (control/standby.py), with real
processes and a real redis-server on loopback. Two `loa serve --role origin` on one data
directory; the active one is stopped with SIGSTOP mid-programme, so it keeps the directory's
lock (as a dead machine's lock on NFS lasts ~90 s): the standby takes the lease when the
stopped one's expires and carries the programme on from Redis within 10 s, answering 503 to
writes (nothing stored) while the lock is held. After SIGCONT the stale origin learns it no
longer leads and that the leader waits for its directory, and shuts down cleanly to free it;
the leader then opens the database and the whole API works. A standby stopped while it waits
exits cleanly."""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest

from receivers.cli import decode_secret
from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import Node
from tests.integration.test_receiver_restart import ThreadedReceiver

pytestmark = pytest.mark.integration


def _status(n: Node, method: str, path: str, body: dict | None = None
            ) -> tuple[int, dict, dict]:
    req = urllib.request.Request(n.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)
    except OSError:
        return 0, {}, {}


def test_standby_on_air_from_redis_while_the_lock_is_held(tmp_path, redis_server):  # noqa: F811
    data = tmp_path / "shared-data"
    nodes: list[Node] = []

    def node(name: str, role: str, env: dict | None = None, wait: bool = True) -> Node:
        n = Node(tmp_path, name, role, redis_server.url, env or {},
                 data_dir=data if role == "origin" else None, wait=False)
        nodes.append(n)       # stopped at the end even if it never comes up
        if wait:
            wait_for(f"{name} up", n._up, 30)
        return n

    r = None
    try:
        active = node("origin-a", "origin")
        # a standby stopped while it waits ends cleanly
        quitter = node("origin-q", "origin", wait=False)
        wait_for("q waits", lambda: "standby origin" in quitter.output(), 20)
        wait_for("q serves its health", lambda: _status(quitter, "GET", "/api/v1/health")[0]
                 == 503, 20)
        quitter.stop()
        out = (tmp_path / "origin-q.log").read_text(errors="replace")
        assert quitter.proc.returncode == 0 and "Traceback" not in out, out[-3000:]

        standby = node("origin-b", "origin", wait=False)
        wait_for("b waits", lambda: _status(standby, "GET", "/api/v1/health")[0] == 503, 20)
        st, h, _ = _status(standby, "GET", "/api/v1/health")
        assert h["status"] == "standby" and h["cluster"]["standing"] == "follower", h
        (pe,) = free_udp_ports(1)
        edge = node("edge-1", "edge", {"LOA_SEND_PORT": str(pe)})
        st, rx = active.post("/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
        assert st == 201
        wait_for("the secret at the edge", lambda: edge.get("/health")[1]["secrets"] >= 1, 10)
        r = ThreadedReceiver(rx["id"], decode_secret(rx["secret"]), ("127.0.0.1", pe))
        wait_for("registration", lambda: r.session.registered, 10)
        st, bc = active.post("/api/v1/broadcasts", {
            "zones": ["xa-nhon-ly"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 900, "seconds": 300}})
        assert st == 201
        wait_for("audio through the edge", lambda: r.decoded > 50, 10)
        time.sleep(1.5)                               # the on-air book written
        ssrc = r.fr.rx.jitter.ssrc
        os.killpg(active.proc.pid, signal.SIGSTOP)    # hung, its lock held
        t0 = time.monotonic()
        base = r.decoded
        try:
            wait_for("the standby on air", lambda: r.decoded >= base + 25
                     and r.fr.rx.jitter.ssrc != ssrc, 15, interval=0.02)
            took = time.monotonic() - t0
            print(f"\nactive hung (lock held) -> the standby on air at the receiver in "
                  f"{took:.2f} s")
            assert took < 10.0
            st, h, _ = _status(standby, "GET", "/api/v1/health")
            assert st == 503 and h["status"] == "standby", h
            assert h["cluster"]["leader"] and h["cluster"]["on_air"] == [bc["id"]], h
            assert h["cluster"]["took_over"][0]["resumed"], h
            # writes answer 503 with a reason and when to retry; nothing is stored
            st, body, hdrs = _status(standby, "POST", "/api/v1/broadcasts", {
                "zones": ["xa-nhon-ly"], "level": "normal",
                "source": {"kind": "tone", "seconds": 5}})
            assert st == 503 and body["error"]["code"] == "storage_not_ready", body
            assert hdrs.get("Retry-After") == "2"
            assert _status(standby, "DELETE", "/api/v1/zones/xa-nhon-ly")[0] == 503
        finally:
            os.killpg(active.proc.pid, signal.SIGCONT)
        # woken, it learns another leads, stops airing, and frees the directory the leader
        # waits for by shutting down (cleanly: its supervisor would start it as the standby)
        try:
            active.proc.wait(20)
        finally:
            if active.proc.poll() is None:
                os.killpg(active.proc.pid, signal.SIGKILL)
        assert active.proc.returncode == 0
        out_a = (tmp_path / "origin-a.log").read_text(errors="replace")
        assert "waits for the data directory this origin holds" in out_a, out_a[-2000:]
        wait_for("the database open", lambda: _status(standby, "GET", "/api/v1/health")[0]
                 == 200, 15)
        assert "database open" in standby.output()
        # the whole API: what is on air is the carried broadcast, a write goes through
        st, snap, _ = _status(standby, "GET", f"/api/v1/broadcasts/{bc['id']}")
        assert st == 200 and snap["state"] == "playing", snap
        st, rx2, _ = _status(standby, "POST", "/api/v1/receivers",
                             {"zone": "xa-nhon-ly", "name": "Loa 2"})
        assert st == 201, rx2
        j = r.fr.rx.jitter.stats
        before = j.received
        time.sleep(2.0)                               # it plays on through the storage start
        assert r.fr.rx.jitter.stats.received - before >= 90
    finally:
        if r is not None:
            r.stop()
        for n in nodes:
            n.stop()
