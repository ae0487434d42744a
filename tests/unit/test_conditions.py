from alpaca_operator import conditions as cond


def test_set_condition_keeps_transition_time_when_status_holds():
    first = cond.set_condition([], "Ready", "False", "A", "m1", 1, timestamp="2026-01-01T00:00:00Z")
    second = cond.set_condition(
        first, "Ready", "False", "B", "m2", 2, timestamp="2026-01-02T00:00:00Z"
    )
    assert second == [
        {
            "type": "Ready",
            "status": "False",
            "observedGeneration": 2,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "reason": "B",
            "message": "m2",
        }
    ]
    third = cond.set_condition(
        second, "Ready", "True", "C", "m3", 2, timestamp="2026-01-03T00:00:00Z"
    )
    assert third[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_set_condition_leaves_others():
    conditions = cond.set_condition([], "Accepted", "True", "SpecValid", "", 1)
    conditions = cond.set_condition(conditions, "Ready", "False", "X", "", 1)
    assert [c["type"] for c in conditions] == ["Accepted", "Ready"]
    assert cond.find(conditions, "Accepted")["status"] == "True"
    assert cond.find(conditions, "Missing") is None


def test_changed():
    c = {"type": "Ready", "status": "False", "reason": "A"}
    assert cond.changed(None, c)
    assert not cond.changed(dict(c), c)
    assert cond.changed({**c, "reason": "B"}, c)
