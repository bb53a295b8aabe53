"""Speech from a phone over a bad link (5 % loss, 80 ms jitter: bench/lossy_relay.py between an
aiortc sender and a real `loa serve`) stays intelligible at a zone's reference receiver: the
answer asks for Opus in-band FEC, the phone sends it, the server's Opus tap recovers lost
packets from the next one, and the receive queue is as deep as the measured jitter asks."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import wave

import numpy as np
import pytest

from tests.conftest import require_tool
from tests.integration.test_receivers_lossy_link import reference, similarity

pytestmark = pytest.mark.integration

TEXT = ("Thông báo của Ủy ban nhân dân xã. Bão số ba đang tiến vào đất liền, "
        "bà con ngư dân khẩn trương đưa tàu thuyền vào nơi trú ẩn an toàn.")


def _port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def talk_over(tmp_path, speech: np.ndarray, loss_pct: float, jitter_ms: float) -> dict:
    from bench import latency_live as ll
    from bench.fanout import REPO, Proc, _child_env, _free_tcp_port
    from bench.preempt import wait_healthy
    from streamer.ingest.webrtc import restrict_ice_to_loopback
    work = tmp_path / f"run-{loss_pct:g}-{jitter_ms:g}"
    work.mkdir()
    env = _child_env()
    env["LOA_SEND_PORT"] = "0"
    rx_port = _port()
    cfg = work / "t.toml"
    cfg.write_text("webrtc_loopback_only = true\nwebrtc_grace_s = 3.0\n\n"
                   f'[[zones]]\nid = "z"\nname = "z"\nunicast = ["127.0.0.1:{rx_port}"]\n')
    wav_out = work / "rx.wav"
    rx = Proc([sys.executable, "-m", "loa.cli", "receiver", "--listen", f"127.0.0.1:{rx_port}",
               "--out", str(wav_out), "--stats-json", str(work / "rx.json"), "--jitter-ms",
               "60"], env=env, name="receiver", cwd=str(REPO))
    http = _free_tcp_port()
    server = Proc([sys.executable, "-m", "loa.cli", "serve", "--config", str(cfg), "--http",
                   f"127.0.0.1:{http}", "--data-dir", str(work / "data")], env=env,
                  name="loa serve", cwd=str(REPO))
    base = f"http://127.0.0.1:{http}"
    try:
        assert rx.expect(lambda line: "listening" in line, 15) is not None, rx.err[-5:]
        assert wait_healthy(base, server), server.err[-5:]

        async def go() -> dict:
            restrict_ice_to_loopback(True)
            try:
                r = await asyncio.wait_for(ll._send_aiortc(
                    base, "z", 0, 40.0, loss_pct, jitter_ms, signal=speech, seed=7), 60)
            finally:
                restrict_ice_to_loopback(False)
            rx.p.send_signal(2)
            await asyncio.get_running_loop().run_in_executor(None, rx.p.wait, 10)
            if "_pc" in r:
                await r.pop("_pc").close()
            if "_relay" in r:
                r.pop("_relay").close()
            return r

        r = asyncio.run(go())
        assert not r.get("error"), r
        with wave.open(str(wav_out), "rb") as wf:
            out = np.frombuffer(wf.readframes(wf.getnframes()), "<i2").astype(np.float32) / 32768
        # the talk goes on air before the speech starts: from just before its first sound
        loud = np.flatnonzero(np.abs(out) > 0.01)
        out = out[max(0, int(loud[0]) - 4800):] if len(loud) else out
        r["similarity"] = round(similarity(speech, out), 3)
        return r
    finally:
        server.stop()
        rx.stop()


def test_speech_over_a_lossy_jittery_phone_link_stays_intelligible(tmp_path):
    require_tool("espeak-ng", "speech is the test signal")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "vi", "-s", "150", "-w", str(path), TEXT], check=True,
                   timeout=30, capture_output=True)
    speech = reference(path)
    r = talk_over(tmp_path, speech, 5.0, 80.0)
    summary = {k: r.get(k) for k in ("similarity", "inband_fec", "answer_fmtp", "link",
                                     "server_receive")}
    print("\n" + json.dumps(summary, indent=1, default=str))
    # the answer asked for FEC and the phone sent it (the offer/answer fmtp lines)
    assert r["inband_fec"] and any("useinbandfec=1" in ln for ln in r["answer_fmtp"])
    up = r["link"]["sender_to_server"]
    assert 2.5 < up["loss_pct"] < 9 and 30 < up["delay_ms_mean"] < 60   # the link as asked
    rcv = r["server_receive"]["receive"]
    assert rcv["lost"] > 10 and rcv["fec_recovered"] >= 0.6 * rcv["lost"], rcv
    assert r["server_receive"]["queue_frames"] >= 3      # the queue grew with the jitter
    # SIMILARITY_MIN: see the module's note on the threshold
    assert r["similarity"] > SIMILARITY_MIN, summary


#: The same 9 s of speech over the same path, measured here: clean link 0.94, 5 % loss + 80 ms
#: jitter 0.81 (34 packets lost, 32 recovered by FEC, 2 concealed). The measure (best normalised
#: correlation per 200 ms block of speech) is the one test_receivers_lossy_link holds at > 0.8
#: clean and > 0.5 under 20 % burst loss; 0.7 leaves run-to-run room under the measured 0.81
#: and fails a path that loses whole stretches of speech.
SIMILARITY_MIN = 0.7
