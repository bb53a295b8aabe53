"""`loa bench nodes`' own arithmetic (bench/nodes.py): the p95 of failover times, the CPU table
(an edge's µs per packet as a ratio to the single node's of the same N, the origin's flatness),
and the options it refuses."""
from __future__ import annotations

from bench.nodes import CpuRun, NodesOptions, check_options, cost_fit, cpu_summary, p95


def test_p95_is_the_nearest_rank():
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    ten = [float(x) for x in (5, 1, 9, 2, 8, 3, 7, 4, 6, 10)]
    assert p95(ten) == 10.0                 # with 10 trials: the slowest one
    twenty = [float(x) for x in range(1, 21)]
    assert p95(twenty) == 19.0              # ceil(0.95 * 20) = 19th of 20


def _single(n: int, us: float) -> CpuRun:
    return CpuRun(receivers=n, kind="single", senders={"single": {"cpu_us_per_pkt": us}})


def _cluster(n: int, a: float, b: float, origin_busy: float) -> CpuRun:
    return CpuRun(receivers=n, kind="cluster",
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
