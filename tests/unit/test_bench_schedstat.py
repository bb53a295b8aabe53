"""bench/schedstat.py: how late the kernel ran each thread, from /proc/PID/task/*/schedstat
(pure parsing and differences; the snapshot reads a fake /proc tree)."""
import pytest

from bench import schedstat


def test_parse_reads_run_wait_and_slices():
    assert schedstat.parse("123456 7890 42\n") == (123456, 7890, 42)
    for bad in ("", "1 2", "a b c"):
        with pytest.raises(ValueError):
            schedstat.parse(bad)


def test_delta_per_thread_name_with_the_loop_named_and_new_threads_from_zero():
    before = {10: ("loa", 1_000_000, 500_000, 10), 11: ("loa-tick", 5_000_000, 0, 100),
              12: ("loa-webrtc-rx", 0, 0, 0)}
    after = {10: ("loa", 3_000_000, 4_500_000, 20), 11: ("loa-tick", 9_000_000, 100_000, 200),
             12: ("loa-webrtc-rx", 2_000_000, 2_000_000, 1000),
             13: ("loa-webrtc-rx", 1_000_000, 1_000_000, 500)}   # a second talker's, new
    rows = {r["thread"]: r for r in schedstat.delta(before, after, main_tid=10)}
    assert set(rows) == {"main (event loop)", "loa-tick", "loa-webrtc-rx"}
    loop = rows["main (event loop)"]
    assert loop["cpu_ms"] == 2.0 and loop["wait_ms"] == 4.0 and loop["wakeups"] == 10
    assert loop["wait_per_wakeup_ms"] == 0.4
    rx = rows["loa-webrtc-rx"]
    assert rx["threads"] == 2 and rx["wakeups"] == 1500 and rx["wait_per_wakeup_ms"] == 0.002
    assert rows["loa-tick"]["wait_per_wakeup_ms"] == 0.001
    # busiest first
    assert [r["thread"] for r in schedstat.delta(before, after, 10)][0] == "loa-tick"


def test_a_thread_with_no_wakeups_has_no_mean():
    (row,) = schedstat.delta({}, {7: ("idle", 0, 0, 0)})
    assert row["wait_per_wakeup_ms"] is None and row["thread"] == "idle"


def test_snapshot_reads_every_thread_and_skips_broken_ones(tmp_path):
    for tid, comm, line in ((5, "loa", "1 2 3"), (6, "loa-tick", "4 5 6"), (7, "gone", "x")):
        d = tmp_path / "99" / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "comm").write_text(comm + "\n")
        (d / "schedstat").write_text(line + "\n")
    snap = schedstat.snapshot(99, proc=str(tmp_path))
    assert snap == {5: ("loa", 1, 2, 3), 6: ("loa-tick", 4, 5, 6)}
    assert schedstat.snapshot(12345, proc=str(tmp_path)) == {}
