"""pytest-xdist's loadgroup, with nothing slow queued behind a group.

A group (the node tier, the serving tier, the kwok tier) runs on one worker, and it is the run's
critical path: the node tier is 10 of a run's 13 minutes. xdist's loadgroup tops up every
worker whose queue has two tests or fewer, so near a group's end a single test from any tier
(109 s for the apiserver outage test) waits behind the group's last, longest test, and runs
after it while the other workers are idle. Here a worker with group tests left gets only tests
of the quick tier (tests/unit) to keep its queue fed — and a last test of another tier only
when the group's final test needs a successor to start (an xdist worker runs a test once it
knows the next one) and no quick test is left. Once its group is done it is a worker like the
others.
"""

from __future__ import annotations

from typing import Any

import pytest

QUICK = "tests/unit/"
"""Tests that may wait behind a group: each takes well under a second."""


def _group_tests_left(assigned: dict[str, dict[str, bool]]) -> int:
    return sum(
        1
        for tests in assigned.values()
        for nodeid, done in tests.items()
        if "@" in nodeid and not done
    )


def scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadGroupScheduling

    class GroupsFirst(LoadGroupScheduling):  # type: ignore[misc]
        def _reschedule(self, node: Any) -> None:
            left = _group_tests_left(self.assigned_work.get(node, {}))
            if node.shutting_down or not self.workqueue or left == 0:
                super()._reschedule(node)
                return
            if self._pending_of(self.assigned_work[node]) > 2:
                return
            quick = next((scope for scope in self.workqueue if scope.startswith(QUICK)), None)
            if quick is not None:
                self.workqueue.move_to_end(quick, last=False)
                self._assign_work_unit(node)
            elif left == 1:
                self._assign_work_unit(node)  # the group's last test needs a successor

    return GroupsFirst(config, log)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") == "loadgroup":
        return scheduler(config, log)
    return None
