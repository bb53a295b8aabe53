"""The archive keeps what aired per zone (issue 18, streamer/outputs/archive.py through a real
`loa serve`): a broadcast over two zones, one of them preempted by an emergency for a while, is
archived as two files, each saying whose audio it is; ffmpeg (an independent decoder) hears the
broadcast's tone whole in the zone that was not preempted and, in the other, the tone without
the emergency's."""
from __future__ import annotations

import subprocess
import time

import numpy as np
from tests.integration.conftest import wait_for
from tests.integration.test_listening import TOML, dominant, segments


def _decode(url: str, out) -> np.ndarray:
    p = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", url, "-ac", "1",
                        "-ar", "48000", "-f", "s16le", str(out)], capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    return np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float32) / 32768


def test_a_zone_preempted_for_a_while_has_its_own_archive_of_what_it_aired(serve, tmp_path):
    s = serve(TOML)
    st, b = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa1", "xa2"], "level": "normal",
        "source": {"kind": "tone", "freq_hz": 660, "seconds": 5.0}})
    assert st in (200, 201), b
    time.sleep(1.5)
    st, e = s.request("POST", "/api/v1/broadcasts", {
        "zones": ["xa2"], "level": "emergency",
        "source": {"kind": "tone", "freq_hz": 1200, "seconds": 2.0}})
    assert st in (200, 201), e
    s.wait_state(e["id"])
    s.wait_state(b["id"])

    def archived():
        got = s.request("GET", "/api/v1/archive")[1]["entries"]
        return got if len(got) == 3 else None
    entries = {x["id"]: x for x in wait_for("archived", archived, 20)}
    assert set(entries) == {b["id"], b["id"] + "~2", e["id"]}, entries
    # two zones, one each: the tie goes to the track that began the recording (xa1's)
    whole, parted, alert = entries[b["id"]], entries[b["id"] + "~2"], entries[e["id"]]
    assert whole["zones"] == ["xa1"] and parted["zones"] == ["xa2"], entries
    for x in (whole, parted):
        assert x["broadcast"] == b["id"] and x["broadcast_zones"] == ["xa1", "xa2"]
    assert alert["zones"] == ["xa2"] and alert["broadcast"] == e["id"]
    assert abs(whole["duration_s"] - 5.0) < 0.5, whole
    # xa2 aired the tone until the emergency, then from a little before where it stopped
    assert 4.5 < parted["duration_s"] < 7.0, parted
    assert [x["id"] for x in s.request("GET", "/api/v1/archive?zone=xa1")[1]["entries"]] \
        == [b["id"]]
    x = _decode(s.url + whole["url"], tmp_path / "whole.raw")
    assert abs(len(x) / 48000 - 5.0) < 0.5 and abs(dominant(x) - 660) < 15
    y = _decode(s.url + parted["url"], tmp_path / "parted.raw")
    heard = [f for rms, f in segments(y) if rms > 0.01]
    assert len(heard) >= 16, heard          # >= 4 s of tone
    assert all(abs(f - 660) < 30 for f in heard), heard   # never the emergency's 1200 Hz
