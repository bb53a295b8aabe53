"""streamer/ingest/webrtc.py takes Opus packets from aiortc's RTCRtpReceiver where aiortc hands
them to its (private) jitter buffer; pyproject pins aiortc to the version this was checked
against, and this test checks that contract on the installed aiortc (in integration/ only
because importing aiortc runs ldconfig; no socket, no thread)."""
import pytest

pytestmark = pytest.mark.integration


def test_the_tap_takes_opus_from_aiortcs_receiver_and_passes_other_codecs_on():
    import asyncio

    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from aiortc.rtp import RtpPacket

    from streamer.ingest.webrtc import _OpusTap, install_opus_tap

    async def run() -> tuple[list, object]:
        dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()),
                                [RTCCertificate.generateCertificate()])
        r = RTCRtpReceiver("audio", dtls)
        got: list = []
        assert install_opus_tap(r, {111}, lambda *a: got.append(a))
        tap = r._RTCRtpReceiver__jitter_buffer
        assert isinstance(tap, _OpusTap) and tap.capacity == 16
        # the codecs as aiortc's receive() sets them, without starting its threads
        params = RTCRtpReceiveParameters(codecs=[
            RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                                  payloadType=111),
            RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, channels=1,
                                  payloadType=0)])
        for c in params.codecs:
            r._RTCRtpReceiver__codecs[c.payloadType] = c
        for seq in range(5):
            await r._handle_rtp_packet(RtpPacket(payload_type=111, sequence_number=seq,
                                                 timestamp=seq * 960, ssrc=1,
                                                 payload=b"\xf8\xff\xfe"), 0)
        for seq in range(5, 10):
            await r._handle_rtp_packet(RtpPacket(payload_type=0, sequence_number=seq,
                                                 timestamp=seq * 160, ssrc=1,
                                                 payload=b"\xff" * 160), 0)
        return got, tap.original

    got, original = asyncio.run(run())
    # every Opus packet at once (no prefetch), in arrival order, with its RTP fields
    assert [(g[0], g[1], g[2]) for g in got] == [(s, s * 960, b"\xf8\xff\xfe") for s in range(5)]
    # PCMU went to aiortc's own jitter buffer
    assert original._origin is not None and original._origin >= 5


# -- the claim's receive queue against the tick's phase (issue 17) ---------------------------
def _standing(arrival_phase_ns: int):
    """A standing connection (no offer yet: no socket, no thread) whose muted microphone's
    frames reached the queue at `arrival_phase_ns` in the period."""
    from streamer.ingest.webrtc import WebRtcSession
    s = WebRtcSession(None)
    for i in range(50):
        s.phase.add(7_000_000_000 + i * 20_000_000 + arrival_phase_ns)
    return s


def test_a_claim_queues_one_frame_when_the_tick_follows_the_arrivals_two_when_it_straddles():
    s = _standing(4_000_000)
    s.queue_frames = 2               # what the arrival spread alone asked for (> 2 ms)
    src = s.claim(tick_phase_ns=6_000_000)
    assert src.prime_frames == 1 and s.stats()["claim_queue_frames"] == 1
    s.drop_claim(src)
    src = s.claim(tick_phase_ns=4_100_000)   # a tick in the middle of the arrivals
    assert src.prime_frames == 2
    s.drop_claim(src)
    src = s.claim()                          # the tick's phase unknown: the spread decides
    assert src.prime_frames == 2
    s.drop_claim(src)
    s.queue_frames = 4                       # a jittery link: the phase does not shrink it
    src = s.claim(tick_phase_ns=6_000_000)
    assert src.prime_frames == 4
    # a deep queue takes a late frame's delay back in the next pause; a shallow one keeps it a
    # while (late frames on a loaded machine recur)
    assert src.catchup_after == 0
    s.drop_claim(src)
    s.queue_frames = 1
    src = s.claim(tick_phase_ns=6_000_000)
    from streamer.ingest.webrtc import CATCHUP_AFTER
    assert src.prime_frames == 1 and src.catchup_after == CATCHUP_AFTER > 0
    s.drop_claim(src)


def test_the_tick_conceals_with_the_receive_decoder_and_never_waits_for_it():
    from streamer.ingest.rtp_in import _Decoder
    s = _standing(4_000_000)
    src = s.claim(tick_phase_ns=6_000_000)
    assert src.conceal is None               # aiortc's own path (no tap): no decoder to use
    s.drop_claim(src)
    s.receive_path = "loa"
    s._dec = _Decoder("opus")
    try:
        src = s.claim(tick_phase_ns=6_000_000)
        assert src.conceal is not None
        f = src.conceal()
        assert f is not None and f.shape == (960,) and s.rx["concealed_for_tick"] == 1
        with s._dec_lock:                    # the receive thread is decoding: no stand-in
            assert src.conceal() is None
        s.release()                          # fading out: no stand-in either
        assert src.conceal() is None and s.rx["concealed_for_tick"] == 1
    finally:
        s._dec.close()


def test_a_deep_claim_starts_with_the_pre_roll_it_has_not_the_depth_the_jitter_asks():
    import numpy as np
    """A stall of the phone's sender left the measured jitter asking for 8 frames: a press then
    waited 160 ms for them before its first packet (issue 17). With the receive decoder to
    conceal late frames it starts with the pre-roll it has (at least 2 frames); without one it
    still waits for the full depth (an empty queue would be a gap, not a concealment)."""
    from streamer.ingest.rtp_in import _Decoder
    s = _standing(4_000_000)
    s.queue_frames = 8
    src = s.claim(tick_phase_ns=6_000_000)
    assert src.prime_frames == 8 and src.start_frames == 8    # aiortc's path: no concealment
    s.drop_claim(src)
    s.receive_path = "loa"
    s._dec = _Decoder("opus")
    try:
        src = s.claim(tick_phase_ns=6_000_000)
        assert src.prime_frames == 8 and src.start_frames == 2
        st = s.stats()
        assert st["claim_queue_frames"] == 8 and st["claim_start_frames"] == 2
        src.push(np.zeros(960 * 2, np.float32))
        assert src.ready() and src.read() is not None
    finally:
        s._dec.close()
