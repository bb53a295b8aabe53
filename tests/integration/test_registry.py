"""An online receiver that plays nothing is shown as not playing, with the reason, an alarm event
and /metrics, by a real `loa serve` (GET /api/v1/receivers/{id}, the as-run log, /metrics).

The receiver is the reference FieldReceiver whose media decryption is broken on purpose (as a
receiver with a damaged key store would be): it stays online (heartbeats, reports) while every
media packet fails authentication. Repaired, it plays again and the alarm clears."""
from __future__ import annotations

import re

import pytest

from receivers.cli import decode_secret
from streamer.rtp.srtp import MediaAuthError, MediaUnprotector
from tests.integration.conftest import free_udp_ports, wait_for
from tests.integration.test_receiver_restart import TOML, ThreadedReceiver, live, tone

pytestmark = pytest.mark.integration


class BrokenUnprotector(MediaUnprotector):
    broken = True

    def unprotect(self, data: bytes) -> bytes:
        if self.broken:
            self.failed += 1
            raise MediaAuthError("damaged key store")
        return super().unprotect(data)


def test_online_receiver_failing_auth_is_shown_not_playing(serve):
    port = free_udp_ports(1)[0]
    server = serve(TOML, env={"LOA_RECEIVER_HEARTBEAT_S": "1", "LOA_SEND_PORT": str(port)})
    st, rx = server.request("POST", "/api/v1/receivers", {"zone": "xa-nhon-ly", "name": "Loa"})
    assert st == 201, rx
    rid = rx["id"]
    r = ThreadedReceiver(rid, decode_secret(rx["secret"]), ("127.0.0.1", port))
    bad = BrokenUnprotector()
    r.session.keys = bad
    try:
        wait_for("registration", lambda: r.session.registered, 10)
        tone(server)

        def silent():
            lv = live(server, rid)
            pb = lv.get("playback") or {}
            return lv if pb.get("state") == "not_playing" else None
        lv = wait_for("the receiver to be shown as not playing", silent, 15, interval=0.25)
        assert lv["state"] == "online" and lv["online"], lv
        assert lv["playback"]["reason"] == "auth_failed", lv
        assert lv["playback"]["auth_failed"] > 0, lv
        assert lv["link"]["quality"] is None and lv["link"]["fraction_lost"] is None, lv
        assert r.session.counters["rekeys"] >= 1       # it asked for keys again (in vain)

        st, ev = server.request("GET", "/api/v1/asrun?type=receiver.not_playing")
        alarms = [e for e in ev.get("events", []) if e.get("receiver") == rid]
        assert alarms and alarms[0]["reason"] == "auth_failed", ev
        st, metrics = server.request("GET", "/metrics")
        assert re.search(r'loa_receivers_not_playing\{reason="auth_failed",zone="xa-nhon-ly"\} '
                         r'1(\.0)?\b', metrics), metrics
        m = re.search(r'loa_receiver_auth_failures_total\{zone="xa-nhon-ly"\} ([\d.e+]+)', metrics)
        assert m and float(m.group(1)) > 0, metrics

        # repaired: it plays again, the alarm clears
        bad.broken = False
        wait_for("playing again", lambda: (live(server, rid).get("playback") or {})
                 .get("state") == "playing", 15, interval=0.25)
        st, ev = server.request("GET", "/api/v1/asrun?type=receiver.playing_again")
        assert [e for e in ev.get("events", []) if e.get("receiver") == rid], ev
        st, metrics = server.request("GET", "/metrics")
        assert not re.search(r'loa_receivers_not_playing\{[^}]*zone="xa-nhon-ly"\} 1', metrics)
    finally:
        r.stop()
