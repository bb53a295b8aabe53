"""A polygon alert pushed to a real `loa serve` while a programme plays to one zone, heard by real
reference receivers (`loa receiver`, real libopus) of that zone, some inside the polygon and some
outside: inside hear the programme, then the alert, then (after the Cancel) the programme again;
outside hear the programme throughout; every receiver sees one RTP stream (no loss, no reset)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time

import numpy as np
import pytest

from streamer.ingest.tones import write_tone_wav
from tests.cap_build import cap, info, make_key_and_cert, polygon_area, resource, sign
from tests.integration.conftest import free_udp_ports, read_wav, wait_for
from tests.integration.test_alerts_feeds import FeedServer

pytestmark = pytest.mark.integration
S = "kttv@nchmf.gov.vn"
ADMIN = {"Authorization": "Bearer alert-admin-token-0123"}
XML = {"Content-Type": "application/cap+xml"}
SQUARE = [(13.9, 109.2), (14.0, 109.2), (14.0, 109.3), (13.9, 109.3)]
#: receivers of zone xa: (name, lat, lon, inside the square)
RX = [("in1", 13.95, 109.25, True), ("out1", 14.5, 109.9, False),
      ("in2", 13.91, 109.29, True), ("out2", 13.5, 108.5, False)]


def freq_runs(x: np.ndarray, rate: int, win_s: float = 0.25) -> list[int]:
    """What was heard, in order: each audible window's dominant frequency as 440 or 1000 Hz
    (within 60 Hz; else not counted), a window alone between others (a switch inside it) left
    out, runs collapsed."""
    w = int(rate * win_s)
    labels: list[int] = []
    for i in range(len(x) // w):
        seg = x[i * w:(i + 1) * w]
        if np.sqrt(np.mean(seg ** 2)) < 0.01:
            continue
        spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
        f = float(np.fft.rfftfreq(len(seg), 1 / rate)[np.argmax(spec)])
        near = min((440, 1000), key=lambda t: abs(t - f))
        if abs(near - f) <= 60:
            labels.append(near)
    runs: list[list[int]] = []
    for lab in labels:
        if runs and runs[-1][0] == lab:
            runs[-1][1] += 1
        else:
            runs.append([lab, 1])
    out: list[int] = []
    for lab, n in runs:
        if n >= 2 and (not out or out[-1] != lab):
            out.append(lab)
    return out


def test_a_polygon_reaches_the_receivers_inside_and_the_rest_of_the_zone_keeps_its_programme(
        serve, receivers, tmp_path):
    key, cert = make_key_and_cert("KTTV")
    (tmp_path / "kttv.pem").write_bytes(cert)
    web = FeedServer()
    tone = tmp_path / "alert.wav"
    write_tone_wav(tone, 440, 30.0, rate=22050)
    web.files["/alert.wav"] = tone.read_bytes()
    digest = hashlib.sha1(web.files["/alert.wav"]).hexdigest()
    ports = free_udp_ports(len(RX))
    rx_toml = "".join(f'[[receivers]]\nid = "rx-{n}"\nzone = "xa"\naddress = "127.0.0.1:{p}"\n'
                      f"lat = {lat}\nlon = {lon}\n" for (n, lat, lon, _), p in zip(RX, ports))
    srv = serve(f"""
admin_token = "{ADMIN['Authorization'][7:]}"
alert_attention = "none"
alert_resource_hosts = ["127.0.0.1"]
[[alert_authorities]]
id = "kttv"
certificate = "{tmp_path / 'kttv.pem'}"
senders = ["{S}"]
[[zones]]
id = "tinh"
[[zones]]
id = "xa"
parent = "tinh"
{rx_toml}""")
    ears = {n: receivers(["--listen", f"127.0.0.1:{p}", "--normal-priority"], n)
            for (n, *_), p in zip(RX, ports)}
    try:
        time.sleep(1.0)
        st, prog = srv.request("POST", "/api/v1/broadcasts", {
            "zones": ["tinh"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 1000, "seconds": 60}}, headers=ADMIN)
        assert st in (200, 201), prog
        time.sleep(2.0)
        now = dt.datetime.now(dt.UTC)
        sent = [(now + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S+00:00") for i in (0, 1)]
        exp = (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        msg = sign(cap(identifier="P1", sent=sent[0], infos=[info(
            expires=exp, resources=resource(f"{web.url}/alert.wav", digest),
            areas=[polygon_area(SQUARE)])]), key)
        st, body = srv.request("POST", "/api/v1/alerts", raw=msg, headers={**ADMIN, **XML})
        assert st == 201, body
        assert body["receivers"] == ["rx-in1", "rx-in2"] and body["targets"] == []
        assert body["parts"] == {"xa": ["rx-in1", "rx-in2"]} and body["broadcast"]
        bid = body["broadcast"]
        wait_for("alert on air", lambda: srv.request(
            "GET", f"/api/v1/broadcasts/{bid}", headers=ADMIN)[1].get("state") == "playing", 10)
        time.sleep(3.0)
        cancel = sign(cap(identifier="C1", msg_type="Cancel", sent=sent[1],
                          references=f"{S},P1,{sent[0]}", infos=[]), key)
        st, c = srv.request("POST", "/api/v1/alerts", raw=cancel, headers={**ADMIN, **XML})
        assert st == 200 and c["stopped"] == [bid], c
        # the reports: the zone reached in part is listed; delivery expects the two inside
        st, lst = srv.request("GET", "/api/v1/alerts", headers=ADMIN)
        assert {a["identifier"]: a["zones"] for a in lst["alerts"]}["P1"] == ["xa"], lst
        st, one = srv.request("GET", f"/api/v1/alerts/{body['id']}", headers=ADMIN)
        rows = one["airings"][0]["delivery"]["receivers"]
        assert sorted(r["receiver"] for r in rows) == ["rx-in1", "rx-in2"], one
        time.sleep(3.0)
        srv.request("DELETE", f"/api/v1/broadcasts/{prog['id']}", headers=ADMIN)
        time.sleep(0.5)
    finally:
        for r in ears.values():
            r.stop()
        web.httpd.shutdown()
    for name, _lat, _lon, inside in RX:
        r = ears[name]
        stats = json.loads(r.stats.read_text())
        # one RTP stream throughout: nothing lost, no new stream, no foreign packet
        assert stats["lost"] == 0 and stats["resets"] == 0 and stats["foreign"] == 0, (name, stats)
        x, rate = read_wav(r.out)
        runs = freq_runs(x, rate)
        if inside:
            assert runs == [1000, 440, 1000], (name, runs)
        else:
            assert runs == [1000], (name, runs)
