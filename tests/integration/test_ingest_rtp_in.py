"""RTP ingest on a real port: a GStreamer (and an ffmpeg) sender on loopback reaches the zone's
receiver; the same stream from an address that is not allow-listed does not."""
import asyncio
import socket
import subprocess

import numpy as np
import pytest
from aiohttp import web

from bench.latency_live import RtpCapture, dominant_hz
from control.app import create_app
from control.live import RTP_INGESTS
from control.settings import Settings
from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.packet import RtpPacket
from tests.integration.conftest import until as wait_for

pytestmark = pytest.mark.integration


def udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


@pytest.fixture
async def rtp_server(tmp_path):
    cap = RtpCapture()
    opus_port, pcmu_port = udp_port(), udp_port()
    settings = Settings(zones=[{"id": "xa", "name": "Xã"},
                               {"id": "thon-1", "name": "Thôn 1", "parent": "xa",
                                "unicast": [f"127.0.0.1:{cap.port}"]}],
                        data_dir=tmp_path, http="127.0.0.1:0", send_port=0, rtp_ingest=[
        {"port": opus_port, "bind": "127.0.0.1", "allow": ["127.0.0.1/32"], "zones": ["thon-1"],
         "level": "priority", "codec": "opus", "name": "studio", "idle_s": 1.0},
        {"port": pcmu_port, "bind": "127.0.0.1", "allow": ["127.0.0.1"], "zones": ["thon-1"],
         "level": "normal", "codec": "pcmu", "name": "encoder-box", "idle_s": 1.0},
    ])
    app = create_app(settings)  # starts the configured ingests with the app
    engine = app["loa"].engine
    ingests = app[RTP_INGESTS]
    assert [i.config.port for i in ingests] == [opus_port, pcmu_port]
    runner = web.AppRunner(app)
    try:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield engine, ingests, cap
    finally:
        await runner.cleanup()
        cap.close()


def run_bounded(cmd: list[str], seconds: float) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


async def test_gstreamer_opus_reaches_the_zone_and_strangers_do_not(rtp_server):
    engine, (ing, _), cap = rtp_server
    # 1. a stranger (127.0.0.2) sends a valid Opus stream: dropped, counted, nothing on air
    enc = OpusEncoder(OpusSettings())
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    for k in range(25):
        t = (np.arange(FRAME_SAMPLES) + k * FRAME_SAMPLES) / SAMPLE_RATE
        payload = bytes(enc.encode((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)))
        tx.sendto(RtpPacket(payload_type=111, sequence_number=k, timestamp=k * 960, ssrc=5,
                            payload=payload).serialize(), ("127.0.0.1", ing.port))
        await asyncio.sleep(0.005)
    tx.close()
    enc.close()
    await wait_for(lambda: ing.stats.dropped_not_allowed >= 25, 5, "the stranger's packets")
    await asyncio.sleep(0.3)
    assert ing.stats.accepted == 0 and ing.broadcast_id is None
    assert engine.broadcasts() == [] and cap.count == 0

    # 2. GStreamer from 127.0.0.1: 1 kHz tone via opusenc ! rtpopuspay
    gst = run_bounded(["gst-launch-1.0", "-q", "audiotestsrc", "wave=sine", "freq=1000",
                       "volume=0.5", "is-live=true", "num-buffers=150", "!",
                       "audio/x-raw,rate=48000,channels=1", "!", "opusenc", "!", "rtpopuspay",
                       "!", "udpsink", "host=127.0.0.1", f"port={ing.port}"], 10)
    try:
        await wait_for(lambda: ing.broadcast_id is not None, 10, "the ingest broadcast")
        (b,) = [b.to_dict() for b in engine.broadcasts()]
        assert b["live"] and b["owner"] == "studio" and b["level"] == "priority"
        await wait_for(lambda: cap.count >= 75, 10, "1.5 s of audio at the receiver")
    finally:
        try:
            gst.wait(10)
        except subprocess.TimeoutExpired:
            gst.kill()
    x, _ = cap.decode()
    loud = x[np.abs(x) > 0.05]
    assert len(loud) > SAMPLE_RATE  # more than a second of tone, not silence
    assert abs(dominant_hz(x) - 1000) < 5
    # the stream stopped: idle_s later the zone is released
    await wait_for(lambda: engine.broadcasts() == [], 5, "the zone to be released")
    assert [b for b in engine.broadcasts(include_past=True) if b.ended][-1].reached_zones == ("thon-1",)
    assert ing.stats.dropped_not_allowed >= 25 and ing.stats.broadcasts == 1


async def test_ffmpeg_pcmu_reaches_the_zone(rtp_server):
    engine, (_, ing), cap = rtp_server
    ff = run_bounded(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
                      "-i", "sine=frequency=1000:sample_rate=8000:duration=2", "-ac", "1",
                      "-c:a", "pcm_mulaw", "-f", "rtp", f"rtp://127.0.0.1:{ing.port}"], 10)
    try:
        await wait_for(lambda: cap.count >= 60, 10, "audio at the receiver")
    finally:
        try:
            ff.wait(10)
        except subprocess.TimeoutExpired:
            ff.kill()
    # ffmpeg packs ~128 ms per packet: the live queue grows to fit instead of dropping
    assert ing.stats.accepted >= 10 and ing.stats.wrong_payload == 0
    assert "encoder-box" in {b.owner for b in engine.broadcasts(include_past=True)}
    x, _ = cap.decode()
    assert abs(dominant_hz(x) - 1000) < 5
    assert np.sqrt(np.mean(x ** 2)) > 0.05
