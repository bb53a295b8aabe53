"""`loa bench nodes`' own arithmetic (bench/nodes.py): the p95 of failover times, the CPU table
(an edge's µs per packet as a ratio to the single node's of the same N, the origin's flatness),
and the options it refuses."""
from __future__ import annotations

from bench.nodes import (CpuRun, NodesOptions, check_options, cost_fit, cpu_schedule, cpu_summary,
                         p95, threads_delta)


def test_p95_is_the_nearest_rank():
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    ten = [float(x) for x in (5, 1, 9, 2, 8, 3, 7, 4, 6, 10)]
    assert p95(ten) == 10.0                 # with 10 trials: the slowest one
    twenty = [float(x) for x in range(1, 21)]
    assert p95(twenty) == 19.0              # ceil(0.95 * 20) = 19th of 20


def _single(n: int, us: float, rnd: int = 0) -> CpuRun:
    return CpuRun(receivers=n, kind="single", round=rnd,
                  senders={"single": {"cpu_us_per_pkt": us}})


def _cluster(n: int, a: float, b: float, origin_busy: float, rnd: int = 0) -> CpuRun:
    return CpuRun(receivers=n, kind="cluster", round=rnd,
                  senders={"edge-a": {"cpu_us_per_pkt": a}, "edge-b": {"cpu_us_per_pkt": b}},
                  origin={"cores_busy": origin_busy, "ms_per_tick": origin_busy * 20})


def test_cpu_summary_compares_each_edge_with_the_single_node_of_the_same_n():
    runs = [_single(100, 4.0), _cluster(100, 4.2, 4.6, 0.05),
            _cluster(400, 3.0, 3.2, 0.06), _single(400, 3.0)]
    s = cpu_summary(runs)
    r100, r400 = s["rows"]
    assert r100["receivers_per_edge"] == 100 and r100["receivers"] == 200
    assert r100["edge-a_ratio"] == 1.05 and r100["edge-b_ratio"] == 1.15
    assert r100["edges_within_goal"] is False           # B is 15 % over
    assert r400["edge-a_ratio"] == 1.0 and r400["edges_within_goal"] is True
    assert s["origin_busy_max_over_min"] == 1.2


def test_an_invalid_run_gives_no_ratio():
    bad = _single(100, 4.0)
    bad.valid = False
    s = cpu_summary([bad, _cluster(100, 4.2, 4.2, 0.05)])
    (row,) = s["rows"]
    assert row["edge-a_ratio"] is None and row["edges_within_goal"] is False
    assert s["origin_busy_max_over_min"] is None        # one N: nothing to compare


def test_options_out_of_range_are_refused():
    assert check_options(NodesOptions()) is None
    assert check_options(NodesOptions(sizes=())) is not None
    assert check_options(NodesOptions(sizes=(0,))) is not None
    assert check_options(NodesOptions(trials=0)) is not None
    assert check_options(NodesOptions(redis_window=1.0)) is not None
    assert "cpus" in (check_options(NodesOptions(parts=("cpus",))) or "")


def test_cost_fit_splits_fixed_work_per_tick_from_work_per_packet():
    def run(kind: str, n: int, per_tick_us: dict[str, float]) -> CpuRun:
        r = CpuRun(receivers=n, kind=kind, wall_s=10.0)
        for name, us in per_tick_us.items():
            pk = (2 if kind == "single" else 1) * n * 500        # 500 ticks
            r.senders[name] = {"packets_delivered": pk, "cpu_s": us * 500 / 1e6}
        return r
    # single: 400 µs + 2.4 µs per packet; edges: 300 µs + 2.2 µs per packet
    runs = [run("single", n, {"single": 400 + 2.4 * 2 * n}) for n in (250, 2500)]
    runs += [run("cluster", n, {"edge-a": 300 + 2.2 * n, "edge-b": 300 + 2.2 * n})
             for n in (250, 1000)]
    fit = cost_fit(runs)
    assert fit["single"] == {"fixed_us_per_tick": 400.0, "us_per_packet": 2.4}
    assert fit["edge"] == {"fixed_us_per_tick": 300.0, "us_per_packet": 2.2}
    assert cost_fit(runs[:1]) == {"single": None, "edge": None}     # one N: no line


def test_rounds_give_the_median_of_per_round_ratios():
    # each round's edge is compared with the single node of its own round
    runs = [_single(100, 4.0, 0), _cluster(100, 4.4, 4.0, 0.05, 0),
            _single(100, 5.0, 1), _cluster(100, 5.0, 5.5, 0.07, 1),
            _single(100, 4.0, 2), _cluster(100, 4.2, 4.0, 0.06, 2)]
    (row,) = cpu_summary(runs)["rows"]
    assert row["rounds"] == 3
    assert row["edge-a_ratios"] == [1.1, 1.0, 1.05] and row["edge-a_ratio"] == 1.05
    assert row["edge-b_ratios"] == [1.0, 1.1, 1.0] and row["edge-b_ratio"] == 1.0
    assert row["single_us_per_pkt"] == 4.0 and row["edge-a_us_per_pkt"] == 4.4
    assert row["origin_cores_busy"] == 0.06
    assert row["edges_within_goal"] is True


def test_a_round_with_an_invalid_single_run_gives_no_ratio_for_that_round():
    bad = _single(100, 9.0, 1)
    bad.valid = False
    runs = [_single(100, 4.0, 0), _cluster(100, 4.2, 4.2, 0.05, 0),
            bad, _cluster(100, 8.0, 8.0, 0.05, 1)]
    (row,) = cpu_summary(runs)["rows"]
    assert row["edge-a_ratios"] == [1.05] and row["edge-a_ratio"] == 1.05
    assert row["single_us_per_pkt"] == 4.0


def test_cpu_schedule_alternates_which_kind_runs_first():
    sched = cpu_schedule((100, 250, 1000), 2)
    assert len(sched) == 12
    firsts = {(rnd, n): kind for rnd, n, kind in sched[::2]}
    assert firsts == {(0, 100): "single", (0, 250): "cluster", (0, 1000): "single",
                      (1, 100): "cluster", (1, 250): "single", (1, 1000): "cluster"}
    # every (round, N) has one run of each kind, one after the other
    for a, b in zip(sched[::2], sched[1::2]):
        assert a[:2] == b[:2] and {a[2], b[2]} == {"single", "cluster"}
    # with an even number of sizes each N still changes order from one round to the next
    assert [k for r, n, k in cpu_schedule((100, 250), 2)[::2]] == [
        "single", "cluster", "cluster", "single"]
    assert check_options(NodesOptions(rounds=0)) is not None


def test_threads_delta_sums_cpu_per_thread_name():
    before = {(10, 10): ("main", 1.0), (10, 11): ("loa-edge-feed", 2.0)}
    after = {(10, 10): ("main", 1.5), (10, 11): ("loa-edge-feed", 5.0),
             (10, 12): ("asyncio_0", 0.25), (10, 13): ("asyncio_0", 0.25)}
    assert threads_delta(before, after) == {"loa-edge-feed": 3.0, "main": 0.5,
                                            "asyncio_0": 0.5}
