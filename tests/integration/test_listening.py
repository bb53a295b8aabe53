"""HTTP listening (issue 18): /listen/{zone}.ogg decoded by ffmpeg (an independent client) is
the zone's audio across a preemption and silence; Icecast headers; limits refuse with 503 and
Retry-After; counts in the API and /metrics; private zones need an account."""
from __future__ import annotations

import socket
import subprocess
import time
from urllib.parse import quote

import numpy as np
from tests.integration.conftest import wait_for

TOML = """
demo_zone = false
listen_public_zones = ["xa1"]
listen_max_per_address = 3
listen_max_per_zone = 5
[[zones]]
id = "xa1"
name = "Xã Một"
[[zones]]
id = "xa2"
name = "Xã Hai"
"""


def ffmpeg_record(url: str, seconds: float, out) -> subprocess.Popen:
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-t", str(seconds), "-i", url,
         "-ac", "1", "-ar", "48000", "-f", "s16le", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def dominant(x: np.ndarray, rate: int = 48000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


def segments(x: np.ndarray, rate: int = 48000, win_s: float = 0.25) -> list[tuple[float, float]]:
    """(rms, dominant frequency) per window."""
    w = int(rate * win_s)
    out = []
    for i in range(0, len(x) - w, w):
        seg = x[i:i + w]
        rms = float(np.sqrt(np.mean(seg ** 2)))
        out.append((rms, dominant(seg) if rms > 0.003 else 0.0))
    return out


def test_ogg_stream_is_the_zones_audio_across_preemption_and_silence(serve, tmp_path):
    s = serve(TOML)
    out = tmp_path / "listen.raw"
    rec = ffmpeg_record(s.url + "/listen/xa1.ogg", 9.0, out)
    wait_for("listener", lambda: s.request("GET", "/api/v1/listen")[1]["total"] == 1, 10)
    time.sleep(1.0)   # ~1 s of silence first: the stream flows with nothing on air
    st, b1 = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 440, "seconds": 6.0}})
    assert st in (200, 201), b1
    time.sleep(2.0)
    st, b2 = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "emergency",
        "source": {"kind": "tone", "freq_hz": 1200, "seconds": 2.0}})
    assert st in (200, 201), b2
    _, err = rec.communicate(timeout=30)
    assert rec.returncode == 0, err.decode()
    x = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float32) / 32768
    assert len(x) >= 48000 * 8.5, len(x) / 48000   # a continuous stream: ~9 s of audio
    segs = segments(x)
    freqs = [f for _, f in segs]
    assert any(abs(f - 440) < 20 for f in freqs), freqs
    assert any(abs(f - 1200) < 30 for f in freqs), freqs
    # the order the zone heard: silence, 440 Hz, 1200 Hz (preemption), 440 Hz again (resumed)
    seq = []
    for f in freqs:
        tag = 440 if abs(f - 440) < 20 else 1200 if abs(f - 1200) < 30 else 0 if f == 0 else -1
        if not seq or seq[-1] != tag:
            seq.append(tag)
    assert seq[0] == 0, seq
    i440 = seq.index(440)
    assert 1200 in seq[i440:], seq
    assert 440 in seq[seq.index(1200):], seq


def _raw_get(port: int, path: str, read: int = 4096) -> tuple[str, bytes]:
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data) < read:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_icecast_headers_and_header_pages(serve):
    s = serve(TOML)
    head, body = _raw_get(s.port, "/listen/xa1.ogg", 200)
    h = head.lower()
    assert " 200 " in head.splitlines()[0]
    assert "content-type: audio/ogg" in h
    assert "icy-name:" in h and "icy-pub: 1" in h and "icy-description:" in h
    assert "no-cache" in h and "access-control-allow-origin: *" in h
    assert b"OggS" in body and b"OpusHead" in body


def test_limits_refuse_with_503_and_retry_after(serve):
    s = serve(TOML)
    conns = []
    try:
        for _ in range(3):   # listen_max_per_address = 3
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"GET /listen/xa1.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 200 " in c.recv(4096).split(b"\r\n")[0]
            conns.append(c)
        wait_for("3 listeners", lambda: s.request("GET", "/api/v1/listen")[1]["total"] == 3, 10)
        head, body = _raw_get(s.port, "/listen/xa1.ogg")
        assert " 503 " in head.splitlines()[0], head
        assert "retry-after:" in head.lower()
        assert b"address_listeners_full" in body
        _, m = s.request("GET", "/metrics")
        assert 'loa_listeners{zone="xa1"} 3.0' in m
        _, info = s.request("GET", "/api/v1/listen/xa1")
        assert info["listeners"]["current"] == 3 and info["public"] is True
    finally:
        for c in conns:
            c.close()
    # gone clients are noticed and their places freed
    wait_for("listeners gone", lambda: s.request("GET", "/api/v1/listen")[1]["total"] == 0, 10)
    head, _ = _raw_get(s.port, "/listen/xa1.ogg", 100)
    assert " 200 " in head.splitlines()[0]


def test_private_zone_needs_an_account_and_unknown_zone_is_404(serve):
    s = serve(TOML, env={"LOA_ADMIN_TOKEN": "secret-admin"})
    st, body = s.request("GET", "/listen/xa2.ogg")
    assert st == 401, body
    st, body = s.request("GET", "/listen/nope.ogg")
    assert st == 404, body
    st, _ = s.request("PUT", "/api/v1/listen/zones/xa2", {"public": True},
                      headers={"Authorization": "Bearer secret-admin"})
    assert st == 200
    head, _ = _raw_get(s.port, "/listen/xa2.ogg", 100)
    assert " 200 " in head.splitlines()[0]
    st, body = s.request("PUT", "/api/v1/listen/zones/xa2", {"public": "maybe"},
                         headers={"Authorization": "Bearer secret-admin"})
    assert st == 422, body


def test_slow_reader_is_dropped(serve):
    s = serve("listen_buffer_kb = 4\n" + TOML)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect(("127.0.0.1", s.port))
    c.sendall(b"GET /listen/xa1.ogg HTTP/1.1\r\nHost: x\r\n\r\n")
    s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 440, "seconds": 30.0}})
    # never read: the server's buffer for it fills and it is dropped, the stream goes on
    wait_for("slow reader dropped",
             lambda: s.request("GET", "/api/v1/listen")[1]["dropped_slow"] >= 1, 40, 0.5)
    assert s.request("GET", "/api/v1/listen")[1]["total"] == 0
    c.close()


def test_finished_broadcasts_are_archived_complete_and_replayable(serve, tmp_path):
    s = serve(TOML)
    st, t = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "priority",
        "source": {"kind": "tts", "text": "Thông báo lịch tiêm chủng"}})
    assert st in (200, 201), t
    s.wait_state(t["id"])
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 660, "seconds": 3.0}})
    assert st in (200, 201), b
    st, bg = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa2"], "level": "background",
        "source": {"kind": "tone", "freq_hz": 300, "seconds": 1.0}})
    assert st in (200, 201), bg
    s.wait_state(b["id"])
    s.wait_state(bg["id"])
    entries = wait_for("archived", lambda: len(s.request("GET", "/api/v1/archive")[1]["entries"])
                       == 2 and s.request("GET", "/api/v1/archive")[1]["entries"], 15)
    assert {e["id"] for e in entries} == {b["id"], t["id"]}   # background is not archived
    e = next(e for e in entries if e["id"] == b["id"])
    assert e["zones"] == ["xa1"] and e["level"] == "normal"
    assert abs(e["duration_s"] - 3.0) < 0.5, e
    day = e["started_at"][:10]
    found = s.request("GET", f"/api/v1/archive?date={day}&q=" + quote("TIÊM"))[1]
    assert [x["id"] for x in found["entries"]] == [t["id"]], found
    assert s.request("GET", "/api/v1/archive?q=" + quote("bão"))[1]["count"] == 0
    assert s.request("GET", "/api/v1/archive?zone=xa1")[1]["count"] == 2
    assert s.request("GET", "/api/v1/archive?date=yesterday")[0] == 400
    out = tmp_path / "replay.raw"
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i",
                        s.url + e["url"], "-ac", "1", "-ar", "48000", "-f", "s16le", str(out)],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    x = np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float32) / 32768
    assert abs(len(x) / 48000 - 3.0) < 0.5
    loud = x[np.abs(x) > 0.01]
    assert len(loud) > 48000 * 2.0 and abs(dominant(x) - 660) < 15
    st, _ = s.request("GET", "/api/v1/archive/nope.ogg")
    assert st == 404


def test_zone_public_field_from_file_api_and_the_older_setting(serve):
    s = serve("""
demo_zone = false
listen_public_zones = ["xa1"]
[[zones]]
id = "xa1"
[[zones]]
id = "xa2"
public = true
[[zones]]
id = "xa3"
""", env={"LOA_ADMIN_TOKEN": "secret-admin"})
    auth = {"Authorization": "Bearer secret-admin"}
    # xa1 public by the older setting, xa2 by its own field, xa3 private
    assert s.request("GET", "/api/v1/listen/xa1")[0] == 200
    assert s.request("GET", "/api/v1/listen/xa2")[0] == 200
    assert s.request("GET", "/api/v1/listen/xa3")[0] == 401
    assert s.request("GET", "/api/v1/zones/xa2", headers=auth)[1]["public"] is True
    assert s.request("GET", "/api/v1/zones/xa3", headers=auth)[1]["public"] is False
    st, body = s.request("PATCH", "/api/v1/zones/xa3", {"public": True}, headers=auth)
    assert st == 200, body
    assert s.request("GET", "/api/v1/listen/xa3")[0] == 200
    # the listening API writes the zone's field, which wins over the setting
    st, _ = s.request("PUT", "/api/v1/listen/zones/xa1", {"public": False}, headers=auth)
    assert st == 200
    assert s.request("GET", "/api/v1/listen/xa1")[0] == 401
    assert s.request("GET", "/api/v1/zones/xa1", headers=auth)[1]["public"] is False
    st, body = s.request("PATCH", "/api/v1/zones/xa2", {"public": "yes please"}, headers=auth)
    assert st == 422, body


def test_listeners_stay_counted_by_the_connection_guard_after_hand_over(serve):
    """The listening hub takes a listener's socket out of aiohttp after the response head; the
    connection guard must go on counting it (per address), and free its place when it ends."""
    s = serve("http_max_connections_per_address = 2\n"
              + TOML.replace("listen_max_per_address = 3", "listen_max_per_address = 10"))
    addr = "127.0.0.7"

    def connect() -> socket.socket:
        c = socket.socket()
        c.settimeout(10)
        c.bind((addr, 0))
        c.connect(("127.0.0.1", s.port))
        return c

    def answered(c: socket.socket, path: str) -> bytes:
        try:
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return c.recv(4096)
        except OSError:
            return b""
    conns = []
    try:
        for _ in range(2):
            c = connect()
            assert b" 200 " in answered(c, "/listen/xa1.ogg").split(b"\r\n")[0]
            conns.append(c)
        wait_for("2 listeners", lambda: s.request("GET", "/api/v1/listen")[1]["total"] == 2, 10)
        time.sleep(0.3)
        # both of the address's connections are busy listening: a third is refused
        extra = connect()
        assert answered(extra, "/api/v1/health") == b""
        extra.close()
        # the page keeps flowing to the handed-over listeners
        assert len(_drain_some(conns[0], 2000)) >= 2000
    finally:
        conns.pop().close()
    wait_for("one listener left",
             lambda: s.request("GET", "/api/v1/listen")[1]["total"] == 1, 10)
    c = connect()
    assert b" 200 " in answered(c, "/api/v1/health").split(b"\r\n")[0]
    c.close()
    for c in conns:
        c.close()


def _drain_some(c: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cp, kp = tmp_path / "cert.pem", tmp_path / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


def test_listening_over_tls_goes_through_the_tls_layer(tmp_path):
    """Over HTTPS the listener's socket is not taken out of the server: its pages must be
    encrypted like everything else (sent raw they would break the TLS stream)."""
    import os
    import signal
    import ssl

    from tests.integration.conftest import LOA, ROOT, free_port
    cp, kp = _self_signed(tmp_path)
    cfg = tmp_path / "loa.toml"
    cfg.write_text(f'tls_cert = "{cp}"\ntls_key = "{kp}"\n' + TOML, encoding="utf-8")
    port = free_port()
    log = open(tmp_path / "serve.log", "w+b")
    proc = subprocess.Popen(LOA + ["serve", "--config", str(cfg), "--http", f"127.0.0.1:{port}",
                                   "--data-dir", str(tmp_path / "data")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "LOA_SEND_PORT": "0"}, start_new_session=True)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def tls_get(path: str) -> ssl.SSLSocket:
        c = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return c
    try:
        def healthy() -> bool:
            try:
                with tls_get("/api/v1/health") as c:
                    return b" 200 " in c.recv(4096)
            except OSError:
                return proc.poll() is not None   # ended: fail below with its log
        wait_for("https server", healthy, 60)   # a bound: TTS workers warm up first
        assert proc.poll() is None, log.read()
        c = tls_get("/listen/xa1.ogg")
        got = b""
        deadline = time.monotonic() + 10
        while got.count(b"OggS") < 4 and time.monotonic() < deadline:
            chunk = c.recv(65536)   # an SSLError here: plaintext went into the TLS stream
            if not chunk:
                break
            got += chunk
        c.close()
        assert b" 200 " in got.split(b"\r\n")[0] and b"OpusHead" in got
        assert got.count(b"OggS") >= 4, got[:300]   # header pages and audio pages, decrypted
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()
