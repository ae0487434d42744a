"""While a worker runs a group, only quick tests queue behind it (tests/xdist_schedule.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.xdist_schedule import scheduler

GROUP = [f"tests/node/test_a.py::test_{i}@node" for i in range(4)]
SLOW = [f"tests/e2e/test_b.py::test_{i}" for i in range(6)]
QUICK = [f"tests/unit/test_c.py::test_{i}" for i in range(3)]
COLLECTION = GROUP + SLOW + QUICK


class Worker:
    """What the scheduler sees of an xdist worker: the tests it is sent, in order."""

    def __init__(self, name: str) -> None:
        self.name, self.sent, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(COLLECTION[i] for i in indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def _config() -> Any:
    values = {"tx": ["2*popen"], "dist": "loadgroup"}
    return SimpleNamespace(getvalue=values.get, option=SimpleNamespace(loadscopereorder=True))


def _start() -> tuple[Any, Worker, Worker]:
    sched = scheduler(_config(), None)  # xdist logs to its own Producer
    a, b = Worker("a"), Worker("b")
    for w in (a, b):
        sched.add_node(w)
        sched.add_node_collection(w, COLLECTION)
    sched.schedule()
    return sched, a, b


def _complete(sched: Any, worker: Worker, nodeid: str) -> None:
    sched.mark_test_complete(worker, COLLECTION.index(nodeid))


def test_only_quick_tests_queue_behind_a_group():
    sched, a, b = _start()
    assert a.sent == GROUP  # the biggest scope first, to its own worker
    for nodeid in GROUP[:-1]:
        _complete(sched, a, nodeid)
    assert a.sent[4:] == QUICK[:2]  # topped up (xdist keeps 2-3 queued) from the quick tier only
    slow_on_b = [t for t in b.sent if t in SLOW]
    assert slow_on_b  # the other worker takes the slow ones
    assert not [t for t in a.sent if t in SLOW]


def test_a_group_s_last_test_gets_one_successor_when_no_quick_test_is_left():
    sched, a, _ = _start()
    _complete(sched, a, GROUP[0])
    _complete(sched, a, GROUP[1])
    for nodeid in QUICK:  # b would have taken them otherwise; here a queued them
        if nodeid in a.sent:
            _complete(sched, a, nodeid)
    _complete(sched, a, GROUP[2])  # the last group test runs only once it has a successor
    queued_slow = [t for t in a.sent if t in SLOW]
    assert len(queued_slow) == 1
    _complete(sched, a, GROUP[3])
    _complete(sched, a, queued_slow[0])
    assert len([t for t in a.sent if t in SLOW]) >= 1  # a worker like the others again


def test_without_a_group_it_is_xdist_s_loadgroup():
    sched, _, b = _start()
    for nodeid in list(b.sent):
        _complete(sched, b, nodeid)
    assert len(b.sent) > 1  # b, with no group, is topped up as xdist does
