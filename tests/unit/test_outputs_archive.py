"""The archive's pure parts (streamer/outputs/archive.py): retention, search, and what each
zone of a broadcast aired (tracks that part when a zone is preempted)."""
from __future__ import annotations

from streamer.outputs.archive import ArchiveEntry, ArchiveIndex, ArchiveRecorder, retention
from streamer.port import OnAir, ZoneSnapshot
from tests.unit.test_outputs_ogg import parse_pages


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


# ---------------------------------------------------------------- what aired, per zone
class _Engine:
    """The recorder's view of the engine: what each zone hears now (set by the test)."""

    def __init__(self, zones) -> None:
        self.now = {z: ZoneSnapshot(z) for z in zones}

    def hears(self, zone: str, broadcast: str | None, program: int | None) -> None:
        on = (OnAir(broadcast, "normal"),) if broadcast else ()
        self.now[zone] = ZoneSnapshot(zone, on, program)

    def zone_status(self):
        return self.now


def _recorder(tmp_path, zones):
    eng = _Engine(zones)
    followed: list[str] = []
    rec = ArchiveRecorder(ArchiveIndex(tmp_path), eng.zone_status,
                          lambda bid: {"title": "Thông báo", "zones": list(zones),
                                       "level": "normal", "kind": "file"},
                          lambda z, c: followed.append(z), lambda z, c: followed.remove(z))
    return rec, eng, followed


def _pump(rec, zone, k0, progs):
    """One pump of `zone`: ticks k0.. with these programme ids (None: silence); a packet's
    bytes say which programme and tick it is, as the ring would hold them."""
    packets = [None if p is None else b"p%d-k%d" % (p, k0 + i) for i, p in enumerate(progs)]
    rec.on_packets(zone, k0, packets, list(progs))


def _packets(path) -> list[bytes]:
    return [p for pg in parse_pages(path.read_bytes())[2:] for p in pg["packets"]]


def test_a_zone_preempted_for_a_while_is_archived_with_what_it_aired(tmp_path):
    rec, eng, followed = _recorder(tmp_path, ["z1", "z2", "z3"])
    rec.started("b1", "normal", ["z3", "z2", "z1"])
    assert followed == ["z1"]          # one zone's packets while all hear the same
    P, E, F = 11, 22, 33               # the broadcast, an alert in z2, its fork resumed in z2
    for z in ("z1", "z2", "z3"):
        eng.hears(z, "b1", P)
    _pump(rec, "z1", 0, [P] * 10)
    _pump(rec, "z1", 10, [P] * 10)
    eng.hears("z2", "e1", E)           # z2 preempted: it parts from z1/z3
    _pump(rec, "z1", 20, [P] * 10)
    assert followed == ["z1", "z2"] and rec.splits == 1
    _pump(rec, "z2", 30, [E] * 10)     # the alert: not this broadcast
    _pump(rec, "z1", 30, [P] * 10)
    eng.hears("z2", "b1", F)           # the fork, a little before where z2 stopped
    _pump(rec, "z2", 40, [E] * 3 + [F] * 7)
    _pump(rec, "z1", 40, [P] * 10)
    _pump(rec, "z2", 50, [F] * 10)
    _pump(rec, "z1", 50, [P] * 5 + [None] * 5)   # z1/z3 finished, z2 still plays its fork
    _pump(rec, "z2", 60, [F] * 4 + [None] * 6)
    entries = rec.finish_all("b1")
    assert followed == []
    assert [(e.id, e.zones) for e in entries] == [("b1", ["z1", "z3"]), ("b1~2", ["z2"])]
    main, z2 = entries
    assert _packets(tmp_path / main.path) == [b"p11-k%d" % k for k in range(55)]
    # z2: the broadcast until its preemption, nothing of the alert, then its fork
    assert _packets(tmp_path / z2.path) == ([b"p11-k%d" % k for k in range(20)]
                                            + [b"p33-k%d" % k for k in range(43, 64)])
    assert main.duration_s == 1.1 and z2.duration_s == round(41 * 0.02, 2)
    for e in entries:
        api = e.to_api()
        assert api["broadcast"] == "b1" and api["broadcast_zones"] == ["z1", "z2", "z3"]
        assert api["url"] == f"/api/v1/archive/{e.id}.ogg"
    idx = ArchiveIndex(tmp_path)       # both in the index, each found by its own zone
    assert [e.id for e in idx.search({"z2"})] == ["b1~2"]
    assert [e.id for e in idx.search({"z3"})] == ["b1"]


def test_zones_that_hear_the_same_keep_one_file_and_a_zone_that_never_aired_none(tmp_path):
    rec, eng, followed = _recorder(tmp_path, ["a", "b", "c"])
    rec.started("b2", "priority", ["a", "b", "c"])
    eng.hears("a", "b2", 5)
    eng.hears("b", "b2", 5)
    eng.hears("c", "x9", 9)            # held by a higher broadcast all along
    _pump(rec, "a", 0, [5] * 10)
    _pump(rec, "c", 0, [9] * 10)
    _pump(rec, "a", 10, [5] * 10)
    entries = rec.finish_all("b2")
    assert [(e.id, e.zones, e.duration_s) for e in entries] == [("b2", ["a", "b"], 0.4)]
    assert len(list(tmp_path.rglob("*.ogg"))) == 1   # c's empty file is gone
    assert entries[0].to_api()["broadcast_zones"] == ["a", "b", "c"]
    # zones silent before the broadcast becomes audible do not part from each other
    rec.started("b3", "normal", ["a", "b"])
    eng.hears("a", None, None)
    eng.hears("b", "bg", 7)            # a background programme: not this broadcast either
    _pump(rec, "a", 20, [None] * 10)
    assert rec.splits == 1             # only c, earlier
    assert rec.finish_all("b3") == []
