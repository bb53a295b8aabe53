"""`loa bench alert`: a signed CAP 1.2 push → the first packet on the wire, for N receivers
while a programme plays to them; and, in the same run, `POST /broadcasts` (an emergency file)
→ first packet, for comparison.

A real `loa serve` plays a normal programme to one zone (code BENCH0) of N loopback receivers
(drained by the bench sink) plus a probe socket of this process. Each round POSTs either a CAP
message whose audio is a recorded `<resource>` (fetched on the first round from a local HTTP
server, cached by its SHA-1 digest after), a CAP message spoken by espeak-ng (`--spoken`), or an
emergency broadcast of a stored file; the time runs from just before the POST to the first
marker packet at the probe. Each round is then stopped (DELETE of its broadcast).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import machine_info
from bench.fanout import (REPO, FanoutOptions, Proc, _child_env, _free_tcp_port, _http, _prefix,
                          resolve, write_toml)
from bench.preempt import _drain, _wait_marker, kernel_stamps, summary, wait_healthy

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"


def _key_and_cert() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench authority")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


#: `--polygon`: half the receivers (and the probe) sit inside this square, half outside
INSIDE, OUTSIDE = (13.95, 109.25), (14.5, 109.9)
SQUARE = "13.9,109.2 14.0,109.2 14.0,109.3 13.9,109.3 13.9,109.2"


def _polygon_toml(text: str, probe: str) -> str:
    """The bench zone's unicast list as provisioned receivers with coordinates: the probe and
    every other receiver inside SQUARE, the rest outside (one zone, reached in part)."""
    addrs = [probe] + [ln.strip().strip('",') for ln in text.splitlines()
                       if ln.startswith('  "') and ln.rstrip().endswith('",')]
    out = ['[[zones]]\nid = "bench0"\nname = "bench zone 0"\ncodes = ["BENCH0"]\n']
    for i, a in enumerate(addrs):
        lat, lon = INSIDE if i % 2 == 0 else OUTSIDE
        out.append(f'[[receivers]]\nid = "rx{i}"\nzone = "bench0"\naddress = "{a}"\n'
                   f"lat = {lat}\nlon = {lon}\n")
    return "\n".join(out)


def _cap(i: int, resource: str, polygon: bool = False) -> bytes:
    now = dt.datetime.now(dt.UTC)
    sent = now.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    exp = (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return (f'<alert xmlns="{CAP_NS}"><identifier>BENCH-{i}-{time.time_ns()}</identifier>'
            f"<sender>bench@loa</sender><sent>{sent}</sent><status>Actual</status>"
            "<msgType>Alert</msgType><scope>Public</scope><info><language>vi-VN</language>"
            "<category>Met</category><event>Lũ quét</event><urgency>Immediate</urgency>"
            "<severity>Extreme</severity><certainty>Observed</certainty>"
            f"<expires>{exp}</expires><headline>Cảnh báo lũ quét</headline>"
            "<description>Lũ quét đang xảy ra</description><instruction>Di chuyển lên cao"
            "</instruction><parameter><valueName>capDoRuiRo</valueName><value>4</value>"
            f"</parameter>{resource}<area><areaDesc>bench</areaDesc>"
            + (f"<polygon>{SQUARE}</polygon>" if polygon else
               "<geocode><valueName>MA</valueName><value>BENCH0</value></geocode>")
            + "</area></info></alert>").encode()


def _sign(xml: bytes, key: bytes) -> bytes:
    from lxml import etree
    from signxml import XMLSigner
    root = etree.fromstring(xml)
    return etree.tostring(XMLSigner(c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
                          .sign(root, key=key))


def _serve_file(data: bytes) -> tuple[ThreadingHTTPServer, str]:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/alert.wav"


TOKEN = "bench-alert-admin-token-0123456789"


def _req(method: str, url: str, body: dict | None = None, xml: bytes | None = None
         ) -> tuple[int, dict]:
    import json
    data = xml if xml is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/cap+xml" if xml is not None else "application/json",
        "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else {})
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except json.JSONDecodeError:
            return e.code, {}


def run_alert(receivers: int = 5000, rounds: int = 20, spoken: bool = False, console=None,
              polygon: bool = False) -> dict:
    """`polygon`: the CAP area is a polygon over half the zone's receivers (the probe among
    them), which alone hear it (StartBroadcast.only), instead of the zone's geocode."""
    from streamer.ingest.tones import write_tone_wav
    work = Path(tempfile.mkdtemp(prefix="loa-bench-alert-"))
    env = _child_env()
    res = resolve(FanoutOptions(receivers=receivers))
    report: dict = {"benchmark": "alert", "machine": machine_info(),
                    "settings": {"receivers": receivers, "rounds": rounds, "spoken": spoken,
                                 "polygon": polygon, **res},
                    "valid": True, "invalid_reasons": [], "rounds": []}
    key, cert = _key_and_cert()
    (work / "bench.pem").write_bytes(cert)
    tone = write_tone_wav(work / "alert.wav", 1500, 3.0)
    wav = Path(tone).read_bytes()
    httpd, wav_url = _serve_file(wav)
    resource = ("" if spoken else
                "<resource><resourceDesc>bản tin</resourceDesc><mimeType>audio/wav</mimeType>"
                f"<uri>{wav_url}</uri><digest>{hashlib.sha1(wav).hexdigest()}</digest></resource>")
    sink = Proc(_prefix(None, res["nice"]) + [
        sys.executable, "-m", "bench.sink", "--receivers", str(receivers), "--cpu",
        str(res["sink_cpu"]), "--sample", "10", "--max-seconds", str(90 + rounds * 10)],
        env=env, name="sink", cwd=str(REPO))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    probe.bind(("127.0.0.1", 0))
    probe.setblocking(False)
    kernel_stamps(probe)
    server = None
    try:
        line = sink.expect(lambda s: s.startswith("ready"), 20)
        if line is None:
            report["valid"] = False
            report["invalid_reasons"].append("sink did not start")
            return report
        cfg = work / "bench.toml"
        write_toml(cfg, receivers, int(line.split()[1]), 1)
        text = cfg.read_text()
        text = text.replace("unicast = [\n", f'unicast = [\n  "127.0.0.1:{probe.getsockname()[1]}",\n', 1)
        text = text.replace('name = "bench zone 0"\n', 'name = "bench zone 0"\ncodes = ["BENCH0"]\n', 1)
        if polygon:
            text = _polygon_toml(text, f"127.0.0.1:{probe.getsockname()[1]}")
        head = (f'admin_token = "{TOKEN}"\nmedia_dirs = ["{work}"]\n'
                'alert_attention = "none"\nalert_resource_hosts = ["127.0.0.1"]\n'
                f'[[alert_authorities]]\nid = "bench"\ncertificate = "{work / "bench.pem"}"\n'
                f'senders = ["bench@loa"]\n\n')
        cfg.write_text(head + text)
        http = _free_tcp_port()
        server = Proc(_prefix(res["sender_cpus"], res["nice"]) + [
            sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
            f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env, name="loa serve",
            cwd=str(REPO))
        base = f"http://127.0.0.1:{http}"
        if not wait_healthy(base, server):
            report["valid"] = False
            report["invalid_reasons"].append("loa serve did not start: " + " | ".join(server.err[-5:]))
            return report
        st, prog = _req("POST", base + "/api/v1/broadcasts", {
            "zones": ["bench0"], "level": "normal",
            "source": {"kind": "tone", "freq_hz": 440, "seconds": 3600}})
        if st != 201:
            report["valid"] = False
            report["invalid_reasons"].append(f"programme refused: {prog}")
            return report
        time.sleep(1.0)
        series: dict[str, list[float]] = {"cap_push": [], "broadcasts_post": [],
                                          "cap_submit_ms": []}
        # --polygon: a geocode push (the whole zone) in the same run, for comparison
        kinds = (["cap_push", "cap_geocode"] if polygon else ["cap_push"]) + ["broadcasts_post"]
        if polygon:
            series.update({"cap_geocode": [], "cap_geocode_submit_ms": []})
        stages: dict[str, dict[str, list[float]]] = {}   # kind -> stage -> ms
        for i in range(rounds * len(kinds)):
            kind = kinds[i % len(kinds)]
            cap = kind.startswith("cap_")
            _drain(probe)
            body = _sign(_cap(i, resource, kind == "cap_push" and polygon), key) if cap else b""
            t0 = time.monotonic_ns()
            if cap:
                st, b = _req("POST", base + "/api/v1/alerts", xml=body)
                bid = b.get("broadcast")
            else:
                st, b = _req("POST", base + "/api/v1/broadcasts", {
                    "zones": ["bench0"], "level": "emergency", "attention": False,
                    "source": {"kind": "file", "path": str(tone)}})
                bid = b.get("id")
            if st != 201 or not bid:
                report["valid"] = False
                report["invalid_reasons"].append(f"round {i} ({kind}) refused: {st} {b}")
                break
            t1 = _wait_marker(probe, t0, 5.0)
            ms = round((t1 - t0) / 1e6, 3) if t1 else None
            rnd: dict[str, Any] = {"kind": kind, "api_to_packet_ms": ms}
            if cap:
                st2, a = _req("GET", base + f"/api/v1/alerts/{b['id']}")
                air = (a.get("airings") or [{}])[0] if st2 == 200 else {}
                rnd["receipt_to_submit_ms"] = air.get("receipt_to_submit_ms")
                rnd["source"] = air.get("source")
                if rnd["receipt_to_submit_ms"] is not None and i >= len(kinds):
                    series["cap_submit_ms" if kind == "cap_push" else "cap_geocode_submit_ms"
                           ].append(float(rnd["receipt_to_submit_ms"]))
                # where the intake's time went (ms from receipt at each stage), and the
                # engine's created -> first packet
                rnd["stages_ms"] = stg = dict(a.get("stages_ms") or {}) if st2 == 200 else None
                if stg and "receipt_monotonic_ms" in stg:   # the same clock on this machine
                    recv = stg.pop("receipt_monotonic_ms") - t0 / 1e6
                    stg["client_to_receipt"] = round(recv, 2)
                    if ms is not None and "submitted" in stg:
                        stg["submitted_to_packet_at_probe"] = round(ms - recv - stg["submitted"], 2)
                timing = ((air.get("broadcast") or {}).get("timing") or {})
                rnd["created_to_first_packet_ms"] = timing.get("created_to_first_packet_ms")
                if i >= len(kinds):
                    mine = stages.setdefault(kind, {})
                    for name, v in (rnd["stages_ms"] or {}).items():
                        mine.setdefault(name, []).append(float(v))
                    if rnd["created_to_first_packet_ms"] is not None:
                        mine.setdefault("created_to_first_packet", []).append(
                            float(rnd["created_to_first_packet_ms"]))
            report["rounds"].append(rnd)
            if ms is None:
                report["valid"] = False
                report["invalid_reasons"].append(f"round {i}: no marker packet within 5 s")
            elif i >= len(kinds):  # the first CAP round fetches the resource
                series[kind].append(ms)
            _req("DELETE", base + f"/api/v1/broadcasts/{bid}")
            time.sleep(0.3)
        if not server.alive():
            report["valid"] = False
            report["invalid_reasons"].append("loa serve crashed")
        st, health = _http("GET", base + "/api/v1/health")
        report["server_clock"] = health.get("clock") if st == 200 else None
        for k, v in series.items():
            report[k] = summary(v)
        report["cap_stages_ms"] = {kind: {k: summary(v) for k, v in per.items()}
                                   for kind, per in stages.items()}
        return report
    finally:
        if server is not None:
            server.stop()
        sink.say("stop")
        sink.stop()
        probe.close()
        httpd.shutdown()


def render(report: dict, console) -> None:
    from rich.table import Table
    m = report["machine"]
    console.print(f"[bold]loa bench alert[/] — {m['nproc']} cores, {m['cpu_model']}; "
                  f"settings {report['settings']}")
    t = Table(title="API → first RTP packet (ms), first CAP round (resource fetch) excluded")
    for c in ("measure", "n", "p50", "p95", "max", "mean"):
        t.add_column(c)
    for key in ("cap_push", "cap_geocode", "broadcasts_post", "cap_submit_ms",
                "cap_geocode_submit_ms"):
        if key not in report:
            continue
        s = report.get(key) or {}
        t.add_row(key, *(str(s.get(k)) for k in ("n", "p50", "p95", "max", "mean")))
    console.print(t)
    stages = report.get("cap_stages_ms") or {}
    if stages:
        t = Table(title="CAP push: ms from receipt at each stage of the intake (wall; _cpu: the "
                        "event loop's CPU), then the engine's created → first packet")
        t.add_column("stage")
        for kind in stages:
            t.add_column(f"{kind} p50")
            t.add_column(f"{kind} p95")
        names = list(dict.fromkeys(n for per in stages.values() for n in per))
        for name in names:
            t.add_row(name, *(str((per.get(name) or {}).get(k)) for per in stages.values()
                              for k in ("p50", "p95")))
        console.print(t)
    if not report["valid"]:
        console.print(f"[red]INVALID RUN: {report['invalid_reasons']}[/]")
