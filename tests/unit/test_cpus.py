"""engine_cpus: which CPUs the real-time path gets and which the rest of the server keeps."""
from streamer.cpus import split


def test_nothing_requested_pins_nothing():
    assert split([], {0, 1, 2, 3}) == (frozenset(), frozenset(), None)


def test_reserved_core_and_the_rest():
    eng, rest, warn = split([0], {0, 1, 2, 3})
    assert eng == {0} and rest == {1, 2, 3} and warn is None
    eng, rest, warn = split([2, 3], range(4))
    assert eng == {2, 3} and rest == {0, 1} and warn is None


def test_all_cpus_requested_pins_nothing_and_says_why():
    eng, rest, warn = split([0, 1], {0, 1})
    assert eng == frozenset() and rest == frozenset()
    assert warn is not None and "no other CPU" in warn


def test_single_allowed_cpu_pins_nothing():
    # a server confined to one core (taskset, a cgroup) cannot keep normal work off the tick's
    eng, rest, warn = split([0], {0})
    assert (eng, rest) == (frozenset(), frozenset()) and "no other CPU" in str(warn)


def test_cpus_outside_the_allowed_set():
    eng, rest, warn = split([7], {0, 1})
    assert (eng, rest) == (frozenset(), frozenset()) and "none of them is allowed" in str(warn)
    eng, rest, warn = split([1, 7], {0, 1, 2})
    assert eng == {1} and rest == {0, 2} and "[7] not allowed" in str(warn)
