"""bench/lossy_relay.py: the link model (pure) and the SDP candidate rewriting."""
import numpy as np
import pytest

from bench.lossy_relay import LinkModel, candidate_port, via_relay


def test_link_model_loses_and_delays_as_configured():
    m = LinkModel(loss_pct=5, jitter_ms=80, seed=3)
    d = [m.decide() for _ in range(20000)]
    kept = np.array([x for x in d if x is not None])
    assert 0.04 < 1 - len(kept) / len(d) < 0.06
    assert kept.min() >= 0 and 0.035 < kept.mean() < 0.050     # N(40, 40) ms, clipped at 0
    assert 0.095 < np.percentile(kept, 95) < 0.120
    clean = LinkModel()
    assert all(clean.decide() == 0.0 for _ in range(100))
    with pytest.raises(ValueError):
        LinkModel(loss_pct=100)


def test_candidates_point_at_the_relay_only():
    sdp = ("v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
           "a=candidate:2 1 tcp 1 127.0.0.1 9 typ host tcptype active\r\n"
           "a=candidate:3 1 udp 2130706431 127.0.0.1 40001 typ host generation 0\r\n"
           "a=end-of-candidates\r\n")
    assert candidate_port(sdp) == ("127.0.0.1", 40000)
    out = via_relay(sdp, 5555)
    assert "127.0.0.1 5555 typ host\r\n" in out and "40000" not in out and "tcp" not in out
    assert "127.0.0.1 5555 typ host generation 0" in out and out.endswith("end-of-candidates\r\n")
