"""Real libopus through streamer.rtp.opus: a tone survives encode/decode, FEC/PLC give frames."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.audio import FRAME_SAMPLES, SAMPLE_RATE
from streamer.rtp.opus import OpusDecoder, OpusEncoder, OpusError, OpusSettings, packet_samples


def tone_frames(freq: float, seconds: float, amplitude: float = 0.5) -> list[np.ndarray]:
    n = int(seconds * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return [x[i:i + FRAME_SAMPLES] for i in range(0, n, FRAME_SAMPLES)]


def peak_hz(x: np.ndarray) -> float:
    w = x * np.hanning(len(x))
    spec = np.abs(np.fft.rfft(w))
    return float(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)[int(np.argmax(spec))])


@pytest.mark.parametrize("application", ["audio", "voip"])
def test_1khz_tone_round_trip(application):
    enc = OpusEncoder(OpusSettings(application=application))
    dec = OpusDecoder()
    out = []
    for f in tone_frames(1000.0, 1.0):
        pkt = bytes(enc.encode(f))
        assert 0 < len(pkt) < 400
        assert packet_samples(pkt) == FRAME_SAMPLES
        pcm = dec.decode(pkt)
        assert pcm.dtype == np.float32 and pcm.shape == (FRAME_SAMPLES,)
        out.append(pcm)
    y = np.concatenate(out)[4800:]                # skip the codec's start-up
    assert abs(peak_hz(y) - 1000.0) <= 5.0
    rms = float(np.sqrt(np.mean(y ** 2)))
    assert 0.25 < rms < 0.45                        # 0.5 amplitude sine: rms 0.354
    enc.close()
    dec.close()


def test_fec_and_plc_produce_whole_frames_that_continue_the_tone():
    enc = OpusEncoder(OpusSettings(application="voip", bitrate=24_000, fec=True,
                                   packet_loss_perc=20))
    dec = OpusDecoder()
    pkts = [bytes(enc.encode(f)) for f in tone_frames(1000.0, 0.6)]
    out = []
    for i, p in enumerate(pkts):
        if i == 15:
            out.append(dec.decode_fec(pkts[16]))    # 15 lost, 16 present: FEC
        elif i == 22:
            out.append(dec.conceal())               # 22 lost, nothing to recover from: PLC
        else:
            out.append(dec.decode(p))
    assert all(o.shape == (FRAME_SAMPLES,) for o in out)
    for k in (15, 22):
        assert float(np.sqrt(np.mean(out[k] ** 2))) > 0.05   # not silence
    y = np.concatenate(out)[4800:]
    assert abs(peak_hz(y) - 1000.0) <= 5.0


def test_multi_frame_packet_durations_are_read_from_the_toc():
    for ms in (10, 20, 40, 60):
        n = SAMPLE_RATE * ms // 1000
        enc = OpusEncoder(OpusSettings(frame_samples=n))
        x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / SAMPLE_RATE)).astype(np.float32)
        pkt = bytes(enc.encode(x))
        assert packet_samples(pkt) == n
        assert OpusDecoder().decode(pkt).shape == (n,)


def test_garbage_is_not_a_packet():
    assert packet_samples(b"") == 0
    assert packet_samples(b"\xff") == 0         # code 3 without its frame-count byte
    with pytest.raises(OpusError):
        OpusDecoder().decode(b"\xff")
