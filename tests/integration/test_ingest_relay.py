"""The relay source (streamer/ingest/relay.py) against a local upstream served by aiohttp at
real-time pace (MP3, Ogg, ADTS AAC, live HLS): it plays the stream, reconnects after the
upstream is cut and restored, raises dead air after `silence_s`, and plays the fallback
meanwhile. Read at the tick's pace (20 ms). The address it connects to is the one it checked
(streamer/ingest/relay_http.py): names resolved once per session, HLS segments checked too."""
from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.ingest.base import MediaError
from streamer.ingest.relay import RelaySource
from streamer.ingest.tones import ToneSource
from tests.integration.relay_upstream import HlsUpstream, Upstream, make_hls, make_stream

pytestmark = pytest.mark.integration
LOOPBACK = ("127.0.0.0/8",)


def dominant_hz(frames: list[np.ndarray]) -> float:
    x = np.concatenate(frames)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * 48_000 / len(x))


def tick(src: RelaySource, seconds: float, notices: list[str]) -> list[np.ndarray]:
    """Read like the engine's tick for `seconds`: one frame per 20 ms, never waiting on it."""
    out: list[np.ndarray] = []
    t0 = time.monotonic()
    n = int(seconds * 50)
    slow = 0
    for k in range(n):
        time.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
        r0 = time.perf_counter()
        f = src.read()
        # a read that waited on the network would wait for the next frame at stream pace
        # (~20 ms) every time the buffer ran dry; a read that only lost the GIL or the core to
        # the decoder thread on a loaded machine is rare: allow a few of those
        if time.perf_counter() - r0 > 0.005:
            slow += 1
            assert slow <= max(3, n // 50), f"read() blocks: {slow} of {k + 1} reads over 5 ms"
        if src.notice:
            notices.append(src.notice)
            src.notice = None
        if f is not None:
            assert f.shape == (960,) and f.dtype == np.float32
            out.append(f)
    return out


@pytest.mark.parametrize("fmt,ctype,freq", [("mp3", "audio/mpeg", 1000.0),
                                            ("ogg", "application/ogg", 700.0),
                                            ("adts", "audio/aac", 900.0)])
def test_relay_plays_reconnects_and_falls_back_on_dead_air(tmp_path, fmt, ctype, freq):
    stream = make_stream(tmp_path / f"a.{fmt}", freq, fmt=fmt)
    up = Upstream(stream, content_type=ctype, bytes_per_s=8000 if fmt == "mp3" else 12000)
    src = RelaySource(up.url, fallback=lambda s: ToneSource(440.0, 1.5), silence_s=1.0, allow_hosts=LOOPBACK,
                      reconnect_max_s=1.0)
    notices: list[str] = []
    try:
        src.start()
        deadline = time.monotonic() + 10
        while not src.ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert src.connects == 1, src.last_error
        live = tick(src, 2.0, notices)
        assert len(live) >= 90
        assert abs(dominant_hz(live[-50:]) - freq) < 10
        assert notices == []

        up.cut()
        down = tick(src, 3.5, notices)   # the queue's second drains, then 1 s of dead air
        assert src.dead_air_events == 1, (notices, src.last_error)
        assert any(n.startswith("dead air") for n in notices), notices
        assert src.fallback_frames > 40
        assert abs(dominant_hz(down[-50:]) - 440.0) < 10   # the fallback is on air
        assert src.drops >= 1

        up.restore()
        back = tick(src, 4.0, notices)
        assert src.connects >= 2 and up.connections >= 2   # it reconnected by itself
        assert src.restores == 1 and any(n.startswith("relay restored") for n in notices)
        assert abs(dominant_hz(back[-50:]) - freq) < 10
        assert src.dead_air_events == 1   # raised once per outage
    finally:
        src.close()
        up.close()


def test_silent_upstream_is_dead_air_and_a_finished_fallback_loops(tmp_path):
    tone = make_stream(tmp_path / "t.mp3", 1000.0)
    quiet = make_stream(tmp_path / "q.mp3", 1000.0, amplitude=0.0)
    up = Upstream(tone, silent=quiet)
    src = RelaySource(up.url, fallback=lambda s: ToneSource(440.0, 0.3), silence_s=0.6, allow_hosts=LOOPBACK,
                      reconnect_max_s=1.0)
    notices: list[str] = []
    try:
        src.start()
        deadline = time.monotonic() + 10
        while not src.ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        tick(src, 1.0, notices)
        up.muted = True
        out = tick(src, 4.0, notices)
        assert src.dead_air_events == 1 and src.connects == 1   # connected, but silent
        # a 0.3 s fallback looped for the rest of the silence
        assert src.fallback_frames > 60, src.fallback_frames
        assert abs(dominant_hz(out[-30:]) - 440.0) < 15
    finally:
        src.close()
        up.close()


def test_a_relay_ends_after_its_seconds_and_counts_a_join(tmp_path):
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0))
    src = RelaySource(up.url, silence_s=5.0, seconds=3.0, start_s=2.0, allow_hosts=LOOPBACK)
    try:
        src.start()
        assert src.position_s == 2.0
        tick(src, 1.2, [])
        assert src.finished and abs(src.position_s - 3.0) < 0.03
    finally:
        src.close()
        up.close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/y.mp3", "http:///nohost",
                                 "rtmp://127.0.0.1/live", "javascript:alert(1)"])
def test_only_http_urls_are_relayed(url):
    with pytest.raises(MediaError):
        RelaySource(url)


def wait_ready(src: RelaySource, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not src.ready() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_hls_live_playlist_plays_reconnects_and_falls_back(tmp_path):
    up = HlsUpstream(make_hls(tmp_path / "hls", 800.0, seconds=40.0))
    src = RelaySource(up.url, fallback=lambda s: ToneSource(440.0, 1.5), silence_s=1.0,
                      reconnect_max_s=1.0, allow_hosts=LOOPBACK)
    notices: list[str] = []
    try:
        src.start()
        wait_ready(src, 15)
        assert src.connects == 1, src.last_error
        live = tick(src, 3.0, notices)
        assert len(live) >= 140 and up.segment_gets >= 1
        assert abs(dominant_hz(live[-50:]) - 800) < 10

        up.cut()   # playlist reloads and segments answer 503
        down: list[np.ndarray] = []
        for _ in range(15):   # what was fetched before the cut plays out first
            down += tick(src, 1.0, notices)
            if src.dead_air_events:
                break
        assert src.dead_air_events == 1, (notices, src.last_error)
        down = tick(src, 1.5, notices)
        assert abs(dominant_hz(down[-50:]) - 440.0) < 10, (src.last_error, src.restores)

        gets = up.segment_gets
        up.restore()
        back = tick(src, 8.0, notices)
        assert src.connects >= 2 and up.segment_gets > gets, src.last_error
        assert src.restores == 1 and any(n.startswith("relay restored") for n in notices)
        assert abs(dominant_hz(back[-50:]) - 800) < 10
    finally:
        src.close()
        up.close()


def test_a_name_is_resolved_once_and_the_checked_address_is_connected_to(tmp_path):
    """A resolver that rebinds (first loopback, which the allow list admits, then the cloud
    metadata address): the session connects to the first answer, asked once, and names the
    host in its request."""
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0))
    answers = iter([["127.0.0.1"]] + [["169.254.169.254"]] * 20)
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    url = f"http://station.test:{up.port}/live.mp3"
    src = RelaySource(url, silence_s=5.0, allow_hosts=LOOPBACK, resolver=resolver)
    try:
        src.start()
        wait_ready(src)
        frames = tick(src, 1.5, [])
        assert len(frames) >= 60 and abs(dominant_hz(frames[-40:]) - 1000) < 10
        assert asked == ["station.test"] and src.addresses == ["127.0.0.1"]
        assert up.hosts == [f"station.test:{up.port}"]
    finally:
        src.close()
        up.close()


def test_a_private_address_is_refused_where_the_relay_connects(tmp_path):
    """Without the allow list, a name that resolves to loopback (as a rebinding name does after
    passing the API's check) never reaches the upstream."""
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0))
    src = RelaySource(f"http://station.test:{up.port}/live.mp3", silence_s=5.0,
                      reconnect_max_s=0.5, resolver=lambda host, port: ["127.0.0.1"])
    try:
        src.start()
        time.sleep(1.5)
        assert src.blocked >= 1 and src.connects == 0
        assert "private or local" in (src.last_error or ""), src.last_error
        assert up.hosts == []
    finally:
        src.close()
        up.close()


@pytest.mark.parametrize("allowed,plays", [(("station.test", "cdn.test"), True),
                                           (("station.test",), False)])
def test_hls_segments_on_another_host_are_checked_too(tmp_path, allowed, plays):
    """The playlist names its segments on a CDN host: they are fetched only if that host passes
    the same check (here both names resolve to loopback; only allowed names may be used)."""
    up = HlsUpstream(make_hls(tmp_path / "hls", 800.0, seconds=20.0))
    up.segment_base = f"http://cdn.test:{up.port}/live/"
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    src = RelaySource(f"http://station.test:{up.port}/live/index.m3u8", silence_s=5.0,
                      reconnect_max_s=0.5, allow_hosts=allowed, resolver=resolver)
    try:
        src.start()
        wait_ready(src, 8)
        frames = tick(src, 2.0, [])
        if plays:
            assert up.segment_gets >= 1 and len(frames) >= 80, src.last_error
            assert abs(dominant_hz(frames[-40:]) - 800) < 10
            assert f"cdn.test:{up.port}" in up.hosts
            assert asked.count("cdn.test") == src.connects   # once per session
        else:
            assert up.playlists >= 1 and up.segment_gets == 0
            assert frames == [] and src.connects == 0
            assert f"cdn.test:{up.port}" not in up.hosts
            assert "private or local" in (src.last_error or ""), src.last_error
    finally:
        src.close()
        up.close()


@pytest.mark.parametrize("target,plays", [("cdn.test", True), ("metadata.test", False)])
def test_a_redirect_is_checked_like_the_url(tmp_path, target, plays):
    """A 302 to another host is followed only if that host passes the same check, at the
    address checked (metadata.test resolves to 169.254.169.254 here: refused, never reached)."""
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0))
    up.redirect_to = f"http://{target}:{up.port}/live.mp3"
    table = {"station.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"],
             "metadata.test": ["169.254.169.254"]}
    src = RelaySource(f"http://station.test:{up.port}/moved", silence_s=5.0,
                      reconnect_max_s=0.5, allow_hosts=("station.test", "cdn.test"),
                      resolver=lambda host, port: table[host])
    try:
        src.start()
        wait_ready(src, 5)
        frames = tick(src, 1.5, [])
        assert up.hosts[0] == f"station.test:{up.port}"
        if plays:
            assert len(frames) >= 60 and abs(dominant_hz(frames[-40:]) - 1000) < 10
            assert f"cdn.test:{up.port}" in up.hosts
        else:
            assert frames == [] and src.connects == 0 and src.blocked >= 1
            assert "169.254.169.254" in (src.last_error or ""), src.last_error
            assert all(h == f"station.test:{up.port}" for h in up.hosts)
    finally:
        src.close()
        up.close()


def station_certificate(tmp_path, name: str):
    """A self-signed certificate for `name` (its own trust anchor) and its key, as files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cp, kp = tmp_path / "station.pem", tmp_path / "station.key"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cp, kp


@pytest.mark.parametrize("name,plays", [("station.test", True), ("other.test", False)])
def test_https_is_verified_against_the_name_not_the_address(tmp_path, monkeypatch, name, plays):
    """The relay connects to the checked address but speaks TLS to the name (SNI, certificate
    checked against it): a certificate for station.test is accepted for station.test and
    refused for other.test, though both resolve to the same address."""
    import ssl
    cp, kp = station_certificate(tmp_path, "station.test")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cp, kp)
    monkeypatch.setenv("SSL_CERT_FILE", str(cp))   # this test's trust store
    up = Upstream(make_stream(tmp_path / "a.mp3", 1000.0), ssl_context=ctx)
    src = RelaySource(f"https://{name}:{up.port}/live.mp3", silence_s=5.0, reconnect_max_s=0.5,
                      allow_hosts=LOOPBACK, resolver=lambda host, port: ["127.0.0.1"])
    try:
        src.start()
        wait_ready(src, 5)
        frames = tick(src, 1.5, [])
        if plays:
            assert len(frames) >= 60 and abs(dominant_hz(frames[-40:]) - 1000) < 10
            assert up.hosts[0] == f"station.test:{up.port}"
        else:
            assert frames == [] and src.connects == 0 and up.hosts == []
            assert "doesn't match 'station.test'" in (src.last_error or ""), src.last_error
    finally:
        src.close()
        up.close()
