"""Live talk in a takeover (control/cluster.py, control/live_talk.py), with real processes
(`loa serve --role origin` ×2, `--role edge`), a real redis-server, the reference receiver and an
aiortc phone on /live/connect: a programme airs, the official goes live over it at priority
(the programme pauses), and the leader is stopped with SIGSTOP past its lease.

- The new leader carries the programme on, from where the live talk paused it (not from where
  it would be had it played on), and not the live talk (the phone's WebRTC connection is to the
  stopped origin: it cannot move).
- After SIGCONT the stale origin ends the claim cleanly (stopped, with the reason the page
  shows), closes the phone's connection (the page reconnects) and refuses a new connection or
  claim with 503 not_leader naming the leader."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from receivers.cli import decode_secret
from streamer.ingest.webrtc import restrict_ice_to_loopback
from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.redis_proc import redis_server  # noqa: F401  (fixture)
from tests.integration.test_control_cluster import cluster  # noqa: F401  (fixture)
from tests.integration.test_receiver_restart import ThreadedReceiver

pytestmark = pytest.mark.integration


def _call(node, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(node.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


async def _phone_goes_live(node, zone: str):
    """An aiortc phone: the standing connection, then the claim (as the /live page does)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack
    restrict_ice_to_loopback()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    loop = asyncio.get_running_loop()
    st, body = await loop.run_in_executor(None, _call, node, "POST", "/api/v1/live/connect",
                                          {"sdp": pc.localDescription.sdp, "type": "offer"})
    assert st == 201, body
    await pc.setRemoteDescription(RTCSessionDescription(body["sdp"], body["type"]))
    for _ in range(100):
        if pc.connectionState == "connected":
            break
        await asyncio.sleep(0.1)
    assert pc.connectionState == "connected"
    await asyncio.sleep(1.0)
    st, claim = await loop.run_in_executor(None, _call, node, "POST",
                                           f"/api/v1/live/sessions/{body['session']}/claim",
                                           {"zones": [zone], "level": "priority"})
    assert st == 201, claim
    return pc, body["session"], claim["broadcast"]["id"]


def test_live_talk_in_a_takeover(cluster, redis_server):  # noqa: F811
    (pe,) = free_udp_ports(1)
    env = {"LOA_WEBRTC_LOOPBACK_ONLY": "true"}
    a = cluster("origin-a", "origin", env)
    b = cluster("origin-b", "origin", env)
    edge = cluster("edge-a", "edge", {"LOA_SEND_PORT": str(pe)})
    st, rx = a.post("/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa chợ"})
    assert st == 201
    wait_for("the secret at the edge", lambda: edge.get("/health")[1]["secrets"] >= 1, 10)
    r = ThreadedReceiver(rx["id"], decode_secret(rx["secret"]), ("127.0.0.1", pe))
    loop = asyncio.new_event_loop()   # the phone's, running beside the test
    phone = threading.Thread(target=loop.run_forever, name="phone", daemon=True)
    phone.start()

    def on_phone(coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
    pc = None
    try:
        wait_for("registration", lambda: r.session.registered, 10)
        st, prog = a.post("/api/v1/broadcasts", {
            "zones": ["xa-nhon-ly"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 700, "seconds": 300}})
        assert st == 201
        wait_for("the programme through the edge", lambda: r.decoded > 50, 10)
        time.sleep(2.0)
        pc, sid, live = on_phone(_phone_goes_live(a, "xa-nhon-ly"))
        t_claim = time.monotonic()
        wait_for("the programme paused under the live talk", lambda: _call(
            a, "GET", f"/api/v1/broadcasts/{prog['id']}")[1]["state"] == "paused", 5)
        paused_at = _call(a, "GET", f"/api/v1/broadcasts/{prog['id']}")[1]["position_s"]
        time.sleep(4.0)                    # the live talk goes on; the on-air book says paused
        ssrc = r.fr.rx.jitter.ssrc
        os.killpg(a.proc.pid, signal.SIGSTOP)
        try:
            wait_for("b leads", lambda: b.get("/api/v1/health")[1]["cluster"]["leader"], 12)
            base = r.decoded
            wait_for("b's programme at the receiver", lambda: r.fr.rx.jitter.ssrc != ssrc
                     and r.decoded > base + 25, 10)
            cb = b.get("/api/v1/health")[1]["cluster"]
            assert cb["on_air"] == [prog["id"]], cb       # the programme, not the live talk
            (carried,) = [t for t in cb["took_over"] if t["broadcast"] == prog["id"]]
            # from where the live talk paused it: not the ~4 s + takeover it spent paused
            assert carried["resumed"] and abs(carried["offset_s"] - paused_at) < 1.0, \
                (carried, paused_at, time.monotonic() - t_claim)
            snap = _call(b, "GET", f"/api/v1/broadcasts/{prog['id']}")[1]
            assert snap["state"] == "playing", snap
            assert _call(b, "GET", f"/api/v1/broadcasts/{live}")[0] == 404
        finally:
            os.killpg(a.proc.pid, signal.SIGCONT)
        # the stale origin ends the claim cleanly and tells why; the phone's connection ends
        wait_for("a follows", lambda: a.get("/api/v1/health")[1]["cluster"]["standing"]
                 == "follower", 10)
        ca = a.get("/api/v1/health")[1]["cluster"]
        assert prog["id"] in ca["yielded"], ca
        ls = _call(a, "GET", f"/api/v1/broadcasts/{live}")[1]
        print("\nthe live talk at the stale origin:", ls.get("state"), ls.get("error"),
              "yielded:", ca["yielded"])
        assert ls["state"] == "stopped", ls
        if live in ca["yielded"]:    # (else its connection's own grace ended it first)
            assert "live talk is not carried over" in json.dumps(ls), ls
        wait_for("the session closed", lambda: _call(a, "GET", f"/api/v1/live/sessions/{sid}")
                 [0] == 404, 5)
        # a new connection or claim here is refused, naming the leader and its address
        st, err = _call(a, "POST", "/api/v1/live/connect", {"sdp": "v=0", "type": "offer"})
        assert st == 503 and err["error"]["code"] == "not_leader", err
        assert "origin-b" in err["error"]["message"] and b.url.split("//")[1] in \
            err["error"]["message"], err
        # the leader takes connections (this SDP is junk: 400, not 503)
        assert _call(b, "POST", "/api/v1/live/connect", {"sdp": "v=0", "type": "offer"})[0] \
            == 400
    finally:
        if pc is not None:
            on_phone(pc.close(), 10)
        loop.call_soon_threadsafe(loop.stop)
        phone.join(5)
        loop.close()
        r.stop()
