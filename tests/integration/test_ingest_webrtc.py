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
