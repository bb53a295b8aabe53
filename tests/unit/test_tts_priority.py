"""streamer/tts/priority.py: synthesis asks for a scheduling class below the server's, absolute
(not relative to the server's nice value), and a refusal by the OS is not an error."""
from __future__ import annotations

import os

from streamer.tts import engines, priority


class FakeOs:
    def __init__(self, refuse_policy: bool = False, refuse_nice: bool = False) -> None:
        self.calls: list[tuple] = []
        self.refuse_policy = refuse_policy
        self.refuse_nice = refuse_nice

    def setscheduler(self, pid: int, policy: int, param: object) -> None:
        if self.refuse_policy:
            raise PermissionError("no")
        self.calls.append(("sched", pid, policy))

    def setpriority(self, which: int, pid: int, nice: int) -> None:
        if self.refuse_nice:
            raise PermissionError("no")
        self.calls.append(("nice", which, pid, nice))


def test_workers_are_batch_class_at_nice_10():
    fake = FakeOs()
    took = priority.lower(priority.WORKER, setscheduler=fake.setscheduler,
                          setpriority=fake.setpriority)
    assert took == "SCHED_BATCH nice 10"
    assert fake.calls == [("sched", 0, os.SCHED_BATCH), ("nice", os.PRIO_PROCESS, 0, 10)]
    fake = FakeOs()
    took = priority.lower(priority.URGENT_WORKER, 4242, setscheduler=fake.setscheduler,
                          setpriority=fake.setpriority)
    # batch: never preempts a waking thread, but keeps a share (nice 10) on a saturated machine
    assert took == "SCHED_BATCH nice 10"
    assert fake.calls == [("sched", 4242, os.SCHED_BATCH), ("nice", os.PRIO_PROCESS, 4242, 10)]


def test_a_refused_policy_falls_back_to_nice_and_nothing_refused_is_an_error():
    fake = FakeOs(refuse_policy=True)
    assert priority.lower(priority.CHILD, 7, setscheduler=fake.setscheduler,
                          setpriority=fake.setpriority) == "nice 19"
    assert fake.calls == [("nice", os.PRIO_PROCESS, 7, 19)]
    fake = FakeOs(refuse_policy=True, refuse_nice=True)
    assert priority.lower(priority.CHILD, 7, setscheduler=fake.setscheduler,
                          setpriority=fake.setpriority) == "unchanged"


def test_espeak_children_are_lowered_by_default():
    # the server's own espeak-ng children (in-process synthesis) get the child's class; a
    # worker process sets CHILD_PRIORITY to None so its children inherit its class instead
    assert engines.CHILD_PRIORITY == priority.CHILD == ("SCHED_BATCH", 19)
    # the nice values are absolute and below any the server runs at
    assert priority.CHILD[1] >= priority.WORKER[1] >= priority.URGENT_WORKER[1] > 0
