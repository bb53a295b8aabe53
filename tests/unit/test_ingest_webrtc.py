"""Turning what aiortc hands over (av.AudioFrame) into 48 kHz mono float32; the event loop's
real-time priority while talkers are connected (LoopPriority)."""
import av
import numpy as np

from streamer.ingest.webrtc import AudioConverter


def frame(samples: np.ndarray, fmt: str, layout: str, rate: int) -> av.AudioFrame:
    f = av.AudioFrame.from_ndarray(samples, format=fmt, layout=layout)
    f.sample_rate = rate
    return f


def test_s16_stereo_48k_fast_path_averages_channels():
    left = np.full(960, 16384, np.int16)
    right = np.zeros(960, np.int16)
    inter = np.stack([left, right], axis=1).reshape(1, -1)  # packed: L R L R ...
    c = AudioConverter()
    x = c.convert(frame(inter, "s16", "stereo", 48000))
    assert x.dtype == np.float32 and x.shape == (960,)
    assert np.allclose(x, 0.25) and c.resampled_frames == 0


def test_other_rates_and_layouts_are_resampled():
    c = AudioConverter()
    t = np.arange(441) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = []
    for k in range(50):
        tt = (np.arange(441) + k * 441) / 44100
        s = (0.5 * np.sin(2 * np.pi * 1000 * tt)).astype(np.float32)
        out.append(c.convert(frame(np.stack([s, s]), "fltp", "stereo", 44100)))
    x = np.concatenate(out)
    assert c.resampled_frames == 50
    assert abs(len(x) - 48000 * 0.5) < 200
    spec = np.abs(np.fft.rfft(x[1000:] * np.hanning(len(x) - 1000)))
    assert abs(np.fft.rfftfreq(len(x) - 1000, 1 / 48000)[np.argmax(spec)] - 1000) < 5
    assert 0.45 < np.max(np.abs(x[1000:])) < 0.55  # same level as the fast path
    assert tone.size  # (the input was a real tone, not silence)


# ---------------------------------------------------------------------------- the Opus tap
# (the tap's contract with aiortc's receiver is checked in tests/integration/test_ingest_webrtc.py:
# importing aiortc runs ldconfig)
def test_opus_payload_types_from_the_offer():
    from streamer.ingest.webrtc import opus_payload_types
    sdp = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0\r\na=rtpmap:111 opus/48000/2\r\n"
           "a=rtpmap:63 red/48000/2\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n")
    assert opus_payload_types(sdp) == {111}
    assert opus_payload_types("m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n") == set()



def test_the_answer_asks_the_phone_for_inband_fec():
    from streamer.ingest.webrtc import with_inband_fec
    aiortc_answer = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
                     "a=rtpmap:0 PCMU/8000\r\na=fmtp:0 foo=1\r\n")
    out = with_inband_fec(aiortc_answer)
    assert "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n" in out
    assert "a=fmtp:0 foo=1\r\n" in out and out.count("useinbandfec") == 1
    # an existing fmtp line of the Opus type gets the parameter, once; others are left alone
    chrome = "a=rtpmap:96 opus/48000/2\na=fmtp:96 minptime=10\n"
    assert with_inband_fec(chrome) == "a=rtpmap:96 opus/48000/2\na=fmtp:96 minptime=10;useinbandfec=1\n"
    assert with_inband_fec(with_inband_fec(chrome)) == with_inband_fec(chrome)
    off = "a=rtpmap:96 opus/48000/2\na=fmtp:96 useinbandfec=0\n"
    assert with_inband_fec(off) == off          # an explicit choice stays
    assert with_inband_fec("m=audio 9 RTP/AVP 0\n") == "m=audio 9 RTP/AVP 0\n"


# -- the event loop's priority while talkers are connected (issue 17); OS calls replaced -------
def test_loop_priority_raised_for_the_first_talker_and_restored_after_the_last(monkeypatch):
    import os

    from streamer.ingest.webrtc import LoopPriority
    calls = []
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(0))
    monkeypatch.setattr(os, "sched_setscheduler",
                        lambda pid, pol, p: calls.append((pid, pol, p.sched_priority)))
    lp = LoopPriority(fifo_priority=5)
    assert lp.acquire() == "SCHED_FIFO"
    assert lp.acquire() == "SCHED_FIFO"     # a second talker: nothing more to do
    assert calls == [(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, 5)]
    lp.release()
    assert len(calls) == 1 and lp.state == "SCHED_FIFO"   # one talker still connected
    lp.release()
    # back to what the thread had, by its id (release may run later on the same thread)
    assert calls[1][1:] == (os.SCHED_OTHER, 0) and calls[1][0] > 0 and lp.state == "normal"
    lp.release()                            # more releases than talkers: nothing happens
    assert len(calls) == 2


def test_loop_priority_changes_nothing_where_real_time_is_refused(monkeypatch):
    import os

    from streamer.ingest.webrtc import LoopPriority

    def refuse(*a):
        raise PermissionError("no")
    niced = []
    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_OTHER)
    monkeypatch.setattr(os, "sched_getparam", lambda pid: os.sched_param(0))
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "setpriority", lambda *a: niced.append(a))
    lp = LoopPriority()
    assert lp.acquire() == "normal" and niced == []   # never a nice the loop's threads inherit
    lp.release()
    assert lp.state == "normal"
