"""A raw server-side path is opened first, checked second and played from what was opened
(issue 13, finding 6h): a symlink swapped while a start is checked never plays a file outside
`media_dirs`."""
from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from streamer.ingest.tones import write_tone_wav
from tests.integration.test_control_policy import ADM, app_client

pytestmark = pytest.mark.integration


async def test_a_symlink_swapped_during_the_check_never_plays_a_file_outside(tmp_path):
    media, outside = tmp_path / "media", tmp_path / "outside"
    media.mkdir()
    outside.mkdir()
    inside_wav = write_tone_wav(media / "ok.wav", 440, 1.0)
    secret = write_tone_wav(outside / "secret.wav", 880, 2.5)
    link = media / "link.wav"
    os.symlink(inside_wav, link)
    stop = threading.Event()

    def swap() -> None:  # flips the link between the good file and the outside one, atomically
        n = 0
        while not stop.is_set():
            n += 1
            tmp = media / f".l{n % 2}"
            os.symlink(secret if n % 2 else inside_wav, tmp)
            os.replace(tmp, link)
    t = threading.Thread(target=swap, daemon=True)
    async with app_client(tmp_path / "data", media_dirs=[media],
                          limit_starts_per_minute_per_principal=100_000,
                          limit_starts_per_minute_per_zone=100_000) as c:
        t.start()
        outcomes: dict[str, int] = {}
        leaked = []
        shown = set()
        try:
            for _ in range(200):
                r = await c.post("/api/v1/broadcasts", headers=ADM, json={
                    "zones": ["xa-b"], "level": "normal", "mode": "mix",
                    "source": {"kind": "file", "path": str(link)}})
                body = await r.json()
                if r.status == 201:
                    outcomes["aired"] = outcomes.get("aired", 0) + 1
                    if abs((body.get("duration_s") or 0) - 1.0) > 0.05:  # measured secret.wav
                        leaked.append(body)
                    shown.add(body["source"].get("path"))
                    await c.delete(f"/api/v1/broadcasts/{body['id']}", headers=ADM)
                else:
                    assert r.status == 403 and body["error"]["code"] == "path_not_allowed", body
                    outcomes["refused"] = outcomes.get("refused", 0) + 1
        finally:
            stop.set()
            t.join(5)
        assert not leaked, (len(leaked), leaked[0])
        assert shown == {str(inside_wav)}  # the file that was opened, by its real name
        assert outcomes.get("aired", 0) > 10 and outcomes.get("refused", 0) > 10, outcomes
        # the descriptors of ended broadcasts are closed (at the next start)
        pins = c.server.app["loa"].broadcasts.pins
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pins.sweep()
            if pins.held() == 0:
                break
            await asyncio.sleep(0.1)
        assert pins.held() == 0


async def test_a_path_outside_or_not_a_file_is_refused_and_nothing_stays_open(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    outside = write_tone_wav(tmp_path / "secret.wav", 880, 1.0)
    os.symlink(outside, media / "escape.wav")
    os.mkfifo(media / "fifo.wav")
    (media / "dir.wav").mkdir()
    async with app_client(tmp_path / "data", media_dirs=[media]) as c:
        pins = c.server.app["loa"].broadcasts.pins
        for name, code in [("escape.wav", "path_not_allowed"), ("fifo.wav", "media_unplayable"),
                           ("dir.wav", "media_unplayable"), ("missing.wav", "media_unplayable"),
                           ("../secret.wav", "path_not_allowed")]:
            r = await c.post("/api/v1/broadcasts", headers=ADM, json={
                "zones": ["xa-b"], "level": "normal", "source": {"kind": "file",
                                                                  "path": str(media / name)}})
            body = await r.json()
            assert r.status in (403, 422) and body["error"]["code"] == code, (name, body)
        assert pins.held() == 0
