"""A feed served by a local HTTP server publishes Alert, then Update (polygon), then Cancel, to a
real `loa serve`: the receivers in each step's area get its audio on the wire, the others get
nothing, and each step takes effect within a poll interval and a second."""
from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from control.alerts.feeds import FeedError, feed_links
from streamer.ingest.tones import write_tone_wav
from tests.cap_build import cap, info, make_key_and_cert, polygon_area, resource, sign
from tests.integration.conftest import free_udp_ports

pytestmark = pytest.mark.integration
S = "kttv@nchmf.gov.vn"


class FeedServer:
    """/feed.xml (Atom) listing /cap/N.xml; the tone files; ETag-conditional on the index."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.entries: list[str] = []
        self.hits: list[tuple[str, int]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/feed.xml":
                    body = outer.index()
                    etag = '"' + hashlib.sha1(body).hexdigest() + '"'
                    if self.headers.get("If-None-Match") == etag:
                        outer.hits.append((self.path, 304))
                        self.send_response(304)
                        self.end_headers()
                        return
                    ctype, extra = "application/atom+xml", {"ETag": etag}
                elif self.path in outer.files:
                    body, ctype, extra = outer.files[self.path], "application/octet-stream", {}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                outer.hits.append((self.path, 200))
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def index(self) -> bytes:
        entries = "".join(f'<entry><id>{p}</id><title>x</title><link rel="alternate" '
                          f'type="application/cap+xml" href="{p}"/></entry>' for p in self.entries)
        return (f'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><id>kttv</id>'
                f"<title>KTTV</title>{entries}</feed>").encode()

    def publish(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.entries.insert(0, path)


class Ears:
    """UDP sockets standing for receivers: when RTP packets reach each, per second."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.times: dict[str, list[float]] = {n: [] for n in ports}
        self.socks = {}
        for n, p in ports.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", p))
            s.settimeout(0.05)
            self.socks[n] = s
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            for n, s in self.socks.items():
                try:
                    while True:
                        s.recv(2048)
                        self.times[n].append(time.monotonic())
                        s.settimeout(0.0)
                except (BlockingIOError, TimeoutError, OSError):
                    s.settimeout(0.02)

    def count(self, name: str, since: float, until: float | None = None) -> int:
        return sum(1 for t in self.times[name] if t >= since and (until is None or t < until))

    def wait(self, name: str, since: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = [t for t in self.times[name] if t >= since]
            if len(hit) >= 5:
                return hit[0] - since
            time.sleep(0.02)
        raise AssertionError(f"{name} heard nothing within {timeout} s")

    def wait_quiet(self, name: str, since: float, timeout: float, quiet_s: float = 1.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max([t for t in self.times[name] if t >= since] or [since])
            if time.monotonic() - last >= quiet_s:
                return last - since
            time.sleep(0.05)
        raise AssertionError(f"{name} still hears after {timeout} s")

    def close(self):
        self.stop = True
        self.thread.join(2)
        for s in self.socks.values():
            s.close()


def test_feed_links_pure():
    atom = (b'<feed xmlns="http://www.w3.org/2005/Atom"><entry><link rel="alternate" href="/a.xml"/>'
            b'<link type="application/cap+xml" href="b.xml"/></entry></feed>')
    assert feed_links(atom, "http://h/x/feed") == ["http://h/x/b.xml"]
    rss = b"<rss><channel><item><link>http://h/c.xml</link></item></channel></rss>"
    assert feed_links(rss, "http://h/") == ["http://h/c.xml"]
    assert feed_links(cap(), "http://h/") is None
    for bad in (b"<html/>", b"<feed", b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'):
        with pytest.raises(FeedError):
            feed_links(bad, "http://h/")


def test_feed_alert_update_cancel_reach_the_right_receivers(serve, tmp_path):
    import datetime as dt
    key, cert = make_key_and_cert("KTTV")
    (tmp_path / "kttv.pem").write_bytes(cert)
    feed = FeedServer()
    tone = tmp_path / "tone.wav"
    write_tone_wav(tone, 440, 30.0, rate=22050)
    wav = tone.read_bytes()
    feed.files["/tone.wav"] = wav
    digest = hashlib.sha1(wav).hexdigest()
    p_in, p_poly, p_out, p_b_out = free_udp_ports(4)
    ears = Ears({"in": p_in, "poly": p_poly, "out": p_out, "b-out": p_b_out})
    toml = f"""
alert_attention = "none"
alert_resource_hosts = ["127.0.0.1"]
[[alert_authorities]]
id = "kttv"
name = "Trung tâm KTTV"
certificate = "{tmp_path / 'kttv.pem'}"
senders = ["{S}"]
[[alert_feeds]]
id = "kttv-feed"
url = "{feed.url}/feed.xml"
authority = "kttv"
interval_s = 0.3
timeout_s = 2
[[zones]]
id = "tinh"
[[zones]]
id = "xa-a"
parent = "tinh"
codes = ["21598"]
[[zones]]
id = "xa-b"
parent = "tinh"
[[zones]]
id = "xa-c"
parent = "tinh"
[[receivers]]
id = "rx-in"
zone = "xa-a"
address = "127.0.0.1:{p_in}"
lat = 13.5
lon = 108.5
[[receivers]]
id = "rx-poly"
zone = "xa-b"
address = "127.0.0.1:{p_poly}"
lat = 13.95
lon = 109.25
[[receivers]]
id = "rx-b-out"
zone = "xa-b"
address = "127.0.0.1:{p_b_out}"
lat = 14.5
lon = 109.9
[[receivers]]
id = "rx-out"
zone = "xa-c"
address = "127.0.0.1:{p_out}"
lat = 15.0
lon = 108.0
"""
    try:
        srv = serve(toml)
        now = dt.datetime.now(dt.UTC)
        sent = [(now + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S+00:00") for i in range(3)]
        exp = (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        res = resource(f"{feed.url}/tone.wav", digest)
        square = [(13.9, 109.2), (14.0, 109.2), (14.0, 109.3), (13.9, 109.3)]
        # a message signed with another key on the same feed is refused, never aired
        other_key, _ = make_key_and_cert("KTTV")
        t = time.monotonic()
        feed.publish("/cap/forged.xml", sign(cap(identifier="F1", sent=sent[0],
                                                 infos=[info(expires=exp, resources=res)]), other_key))
        # 1. Alert by geocode: rx-in hears it
        feed.publish("/cap/1.xml", sign(cap(identifier="A1", sent=sent[0],
                                            infos=[info(expires=exp, resources=res)]), key))
        t1 = time.monotonic()
        first = ears.wait("in", t1, 10.0)
        assert first < 5.0
        time.sleep(1.0)
        assert ears.count("poly", t) == 0 and ears.count("out", t) == 0
        # 2. Update to a polygon: rx-poly hears, rx-in stops
        feed.publish("/cap/2.xml", sign(cap(identifier="U1", msg_type="Update", sent=sent[1],
                                            references=f"{S},A1,{sent[0]}",
                                            infos=[info(expires=exp, resources=res,
                                                        areas=[polygon_area(square)])]), key))
        t2 = time.monotonic()
        assert ears.wait("poly", t2, 10.0) < 5.0
        ears.wait_quiet("in", t2, 5.0)
        t_in_quiet = time.monotonic()
        time.sleep(1.0)
        assert ears.count("in", t_in_quiet) == 0 and ears.count("out", t) == 0
        assert ears.count("poly", time.monotonic() - 0.5) > 0  # still on air (30 s tone)
        # the polygon reaches the receivers inside it, not the whole of their zone
        assert ears.count("b-out", t) == 0
        # 3. Cancel: rx-poly stops mid-tone
        feed.publish("/cap/3.xml", sign(cap(identifier="C1", msg_type="Cancel", sent=sent[2],
                                            references=f"{S},U1,{sent[1]}", infos=[]), key))
        t3 = time.monotonic()
        assert ears.wait_quiet("poly", t3, 5.0) < 4.0
        time.sleep(1.0)
        assert ears.count("out", t) == 0 and ears.count("in", t_in_quiet) == 0
        assert ears.count("b-out", t) == 0
        # the report
        st, lst = srv.request("GET", "/api/v1/alerts")
        states = {a["identifier"]: a["state"] for a in lst["alerts"]}
        assert states == {"A1": "superseded", "U1": "cancelled", "C1": "logged"}, lst
        assert lst["counters"]["refused_signature"] >= 1 and lst["feeds"][0]["ok"] is True
        assert ("/feed.xml", 304) in feed.hits  # conditional GET
        assert sum(1 for h in feed.hits if h[0] == "/cap/1.xml") == 1  # fetched once
    finally:
        ears.close()
        feed.httpd.shutdown()


def test_a_failing_feed_is_an_event_never_a_crash(serve, tmp_path):
    key, cert = make_key_and_cert("KTTV")
    (tmp_path / "kttv.pem").write_bytes(cert)
    port = free_udp_ports(1)[0]  # nothing listens on TCP there
    srv = serve(f"""
[[alert_authorities]]
id = "kttv"
certificate = "{tmp_path / 'kttv.pem'}"
senders = ["{S}"]
feed = "http://127.0.0.1:{port}/feed.xml"
[[alert_feeds]]
id = "broken"
url = "http://127.0.0.1:{port}/other.xml"
interval_s = 0.2
timeout_s = 1
""")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, lst = srv.request("GET", "/api/v1/alerts")
        broken = [f for f in lst["feeds"] if f["id"] == "broken"][0]
        if broken["failures"] >= 2:
            break
        time.sleep(0.2)
    assert broken["ok"] is False and "Connect" in broken["error"]
    assert lst["counters"]["feed_errors"] >= 2
    assert srv.request("GET", "/api/v1/health")[0] == 200
