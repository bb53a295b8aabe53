"""Speech through a lossy UDP relay on loopback (5 % random loss; 20 % loss in 100 ms bursts)
into registered receivers with SRTP, FEC, PLC and the adaptive jitter buffer. Measures
PLC-only concealment and a similarity score of decoded vs. sent audio, for Opus
application=audio and application=voip. The receivers' loss reports make the zone's encoder
plan for the worst of them (in-band LBRR FEC at that loss); the test checks that happens."""
from __future__ import annotations

import asyncio
import json
import random
import subprocess

import numpy as np
import pytest

from receivers.field import FieldReceiver, FieldSession
from receivers.receiver import Receiver, udp_socket
from streamer.ingest.file import FileSource
from streamer.mixer.arbitration import Level
from streamer.port import FileAudio, StartBroadcast
from streamer.rtp import control_protocol as cp
from streamer.rtp.opus import OpusEncoder, OpusSettings
from streamer.rtp.rtcp import is_rtcp
from streamer.runtime import EngineSettings
from tests.conftest import require_tool
from tests.integration.conftest import until
from tests.integration.test_rtp_link import FieldServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CONDITIONS = ("clean", "random5", "burst20")
IDS = {f"{app}-{c}": (f"k-{app}-{c}".encode() * 2, "z1")
       for app in ("audio", "voip") for c in CONDITIONS}


class MemorySink:
    description = "memory"

    def __init__(self):
        self.blocks: list[np.ndarray] = []
        self.samples_written = 0

    def write(self, pcm):
        self.blocks.append(pcm.copy())
        self.samples_written += len(pcm)

    def close(self):
        pass

    def audio(self):
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)


class Loss:
    """random5: each media packet lost with p=5 %. burst20: in every 500 ms, one 100 ms burst
    (5 consecutive packets) at a random place: 20 % loss, all in 100 ms bursts."""

    def __init__(self, kind, seed):
        self.kind = kind
        self.rnd = random.Random(seed)
        self.k = 0
        self.burst_at = 0

    def drop(self):
        k, self.k = self.k, self.k + 1
        if self.kind == "random5":
            return self.rnd.random() < 0.05
        if self.kind == "burst20":
            if k % 25 == 0:
                self.burst_at = self.rnd.randrange(0, 21)
            return self.burst_at <= k % 25 < self.burst_at + 5
        return False


class Relay:
    """receiver <-> relay <-> server; media from the server passes a loss model. Control and
    RTCP pass untouched (the test is about audio)."""

    def __init__(self, server, loss):
        self.server = server
        self.loss = loss
        self.rx_addr = None
        self.dropped = self.forwarded = 0

    async def start(self):
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.rx_addr = addr
                relay.back.sendto(data, relay.server)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if relay.rx_addr is None:
                    return
                if not cp.looks_like_control(data) and not is_rtcp(data):
                    if relay.loss.drop():
                        relay.dropped += 1
                        return
                    relay.forwarded += 1
                relay.front.sendto(data, relay.rx_addr)

        self.front, _ = await loop.create_datagram_endpoint(Front, sock=udp_socket("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, sock=udp_socket("127.0.0.1", 0))
        self.addr = self.front.get_extra_info("sockname")
        return self

    def close(self):
        self.front.close()
        self.back.close()


def speech_file(tmp_path):
    require_tool("espeak-ng", "speech is the test signal")
    path = tmp_path / "speech.wav"
    text = ("Thông báo của Ủy ban nhân dân xã. Bão số ba đang tiến vào đất liền, "
            "bà con ngư dân khẩn trương đưa tàu thuyền vào nơi trú ẩn an toàn. ") * 2
    subprocess.run(["espeak-ng", "-v", "vi", "-s", "150", "-w", str(path), text], check=True,
                   timeout=30, capture_output=True)
    return path


def reference(path):
    src = FileSource(path)
    src.start()
    frames = []
    for _ in range(200000):
        if src.finished and not src.ready():
            break
        f = src.read()
        if f is None:
            if src.finished:
                break
            import time
            time.sleep(0.001)
            continue
        frames.append(f.copy())
    src.close()
    return np.concatenate(frames)


def similarity(ref, out, block=9600, search=2400):
    """Mean over 200 ms blocks of speech of the best normalised correlation with the sent
    audio, tracking the alignment (the adaptive buffer moves it by whole frames)."""
    if len(out) < block * 4:
        return 0.0
    n = min(len(ref), 48000 * 3)
    corr = np.correlate(out[: n + 48000], ref[:n], mode="valid")
    off = int(np.argmax(corr))          # where the reference starts in the output
    scores = []
    for start in range(0, len(ref) - block, block):
        r = ref[start:start + block]
        if np.sqrt(np.mean(r ** 2)) < 0.01:
            continue                     # silence between words says nothing
        def score(lag, off=off, start=start, r=r):
            o0 = off + start + lag
            if o0 < 0 or o0 + block > len(out):
                return -1.0
            o = out[o0:o0 + block]
            den = np.linalg.norm(o) * np.linalg.norm(r)
            return float(np.dot(o, r) / den) if den > 0 else 0.0
        best, best_lag = max((score(lag), lag) for lag in range(-search, search + 1, 48))
        # then to the sample around the coarse peak
        best, best_lag = max((score(lag), lag) for lag in range(best_lag - 47, best_lag + 48))
        if best > -1.0:
            scores.append(max(best, 0.0))
            off += best_lag
    return float(np.mean(scores)) if scores else 0.0


def celt_fraction(app, ref, loss_perc):
    """Share of the signal's frames libopus codes as CELT-only (no LBRR in-band FEC) with
    these settings and the loss the engine's encoder planned for (it sees the same audio)."""
    enc = OpusEncoder(OpusSettings(application=app, packet_loss_perc=loss_perc))
    n = celt = 0
    for i in range(0, len(ref) - 960, 960):
        celt += (bytes(enc.encode(ref[i:i + 960]))[0] >> 3) >= 16
        n += 1
    enc.close()
    return celt / max(1, n)


async def test_lossy_relay_concealment_and_similarity(tmp_path):
    path = speech_file(tmp_path)
    ref = reference(path)
    servers, relays, rxs = {}, [], {}
    try:
        for app in ("audio", "voip"):
            servers[app] = await FieldServer(
                secrets=IDS, settings=EngineSettings(opus=OpusSettings(application=app))).start()
            for i, cond in enumerate(CONDITIONS):
                rid = f"{app}-{cond}"
                relay = await Relay(servers[app].addr, Loss(cond, seed=11 + i)).start()
                relays.append(relay)
                sink = MemorySink()
                fr = FieldReceiver(FieldSession(rid, IDS[rid][0], [relay.addr],
                                                register_retry_s=0.2),
                                   Receiver(sink, adaptive=True))
                stop = asyncio.Event()
                task = asyncio.ensure_future(fr.run(udp_socket("127.0.0.1", 0), duration=60,
                                                    stop=stop))
                rxs[rid] = (fr, sink, stop, task, relay)
        await until(lambda: all(v[0].session.registered for v in rxs.values()), 5, "registered")
        bs = {app: srv.engine.submit(StartBroadcast(
            id="", targets=("z1",), level=Level.NORMAL, source=FileAudio(str(path))))
              for app, srv in servers.items()}
        # the burst-loss receiver's reports make its zone's encoder plan for that loss (FEC)
        await until(lambda: all(srv.engine.stats().encoders["max_loss_perc"] >= 15
                                for srv in servers.values()), 10, "encoders planning for loss")
        planned = {app: dict(srv.engine.stats().encoders) for app, srv in servers.items()}
        await until(lambda: all(srv.state(bs[a].id) == "finished"
                                for a, srv in servers.items()), 60, "the end of the speech")
        await asyncio.sleep(1.0)
        results = {}
        for rid, (fr, sink, stop, task, relay) in rxs.items():
            stop.set()
            await asyncio.wait_for(task, 5)
            st = fr.rx.jitter.stats
            slots = st.played + st.concealed_fec + st.concealed_plc
            app = rid.split("-")[0]
            celt = celt_fraction(app, ref, planned[app]["max_loss_perc"])
            # with CELT, a "FEC" decode has no LBRR data to use: libopus conceals (PLC)
            plc_only = st.concealed_plc + st.concealed_fec * celt
            out = sink.audio()
            results[rid] = {
                "celt_frames_pct": round(100 * celt, 1), "sent": relay.forwarded + relay.dropped,
                "dropped": relay.dropped,
                "loss_pct": round(100 * relay.dropped / max(1, relay.forwarded + relay.dropped), 2),
                "plc_only_pct": round(100 * plc_only / max(1, slots), 2),
                "fec_recovered_pct": round(100 * st.concealed_fec * (1 - celt)
                                           / max(1, slots), 2),
                "similarity": round(similarity(ref, out), 3),
                "audio_s": round(len(out) / 48000, 2), "ref_s": round(len(ref) / 48000, 2),
                "stretched": fr.rx.stats.stretched, "shrunk": fr.rx.stats.shrunk,
                "target_ms": round(fr.rx.jitter.target_delay * 1000, 1),
                "srtp_failed": fr.session.keys.failed, "spurts": st.spurts}
        results["encoders"] = planned
        print("\n" + json.dumps(results, indent=1))
        (tmp_path / "lossy.json").write_text(json.dumps(results, indent=1))
        v5, v20 = results["voip-random5"], results["voip-burst20"]
        assert 3.0 < v5["loss_pct"] < 7.5 and 18.0 < v20["loss_pct"] < 22.0
        assert v5["plc_only_pct"] < 0.5, results
        for rid, r in results.items():
            if rid == "encoders":
                continue
            assert r["srtp_failed"] == 0
            assert r["spurts"] == 1, results     # loss is concealed, never a restart
            assert abs(r["audio_s"] - r["ref_s"]) < 1.5, results     # continuous, no gaps
        clean = results["voip-clean"]["similarity"]
        assert clean > 0.8, results
        assert v5["similarity"] > clean - 0.1, results
        assert v20["similarity"] > 0.5, results
    finally:
        for _fr, _sink, stop, task, _relay in rxs.values():
            stop.set()
            if not task.done():
                task.cancel()
        for r in relays:
            r.close()
        for srv in servers.values():
            srv.stop()
