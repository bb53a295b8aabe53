"""The archive's pure parts (streamer/outputs/archive.py): retention and search."""
from __future__ import annotations

from streamer.outputs.archive import ArchiveEntry, ArchiveIndex, retention


def entry(i: str, created: float, size: int = 100, zones=("z1",), title="", text="",
          started="2026-06-01T05:00:00.000Z") -> ArchiveEntry:
    return ArchiveEntry(id=i, title=title or i, zones=list(zones), level="normal", kind="tone",
                        started_at=started, duration_s=1.0, size=size, path=f"{i}.ogg",
                        text=text, created=created)


def test_retention_by_age_then_oldest_until_the_size_fits():
    es = [entry("old", 0), entry("a", 900), entry("b", 950), entry("c", 990)]
    keep, drop = retention(es, now=1000, max_age_s=500, max_bytes=10_000)
    assert [e.id for e in drop] == ["old"] and [e.id for e in keep] == ["a", "b", "c"]
    keep, drop = retention(es, now=1000, max_age_s=5000, max_bytes=250)
    assert [e.id for e in drop] == ["old", "a"] and [e.id for e in keep] == ["b", "c"]


def test_search_by_zone_date_and_text(tmp_path):
    idx = ArchiveIndex(tmp_path)
    idx.add(entry("storm", 1, zones=("z1", "z2"), title="Cảnh báo bão số 3",
                  text="Bão số 3 đổ bộ", started="2026-09-10T02:00:00.000Z"))
    idx.add(entry("vax", 2, zones=("z3",), title="Tiêm chủng", started="2026-09-11T02:00:00.000Z"))
    assert [e.id for e in idx.search(text="BÃO")] == ["storm"]
    assert [e.id for e in idx.search(text="đổ bộ")] == ["storm"]
    assert [e.id for e in idx.search(zones={"z3"})] == ["vax"]
    assert [e.id for e in idx.search(date="2026-09-10")] == ["storm"]
    assert [e.id for e in idx.search()] == ["vax", "storm"]
    (tmp_path / "index.jsonl").open("a").write('{"torn": ')
    again = ArchiveIndex(tmp_path)   # a torn last line (crash) is skipped
    assert set(again.entries) == {"storm", "vax"}
    (tmp_path / "storm.ogg").write_bytes(b"x")
    assert again.apply_retention(now=10, max_age_s=100, max_bytes=100) == 1
    assert not (tmp_path / "storm.ogg").exists()
    assert set(ArchiveIndex(tmp_path).entries) == {"vax"}
