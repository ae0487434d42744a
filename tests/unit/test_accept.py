from alpaca_operator.accept import accept
from alpaca_operator.api import AlpacaFineTuneSpec, AlpacaModelSpec

GOOD = {"weights": {"source": "hf://org/m"}}


def test_valid_spec_is_accepted_and_events_follow_what_a_person_needs():
    first = accept(GOOD, AlpacaModelSpec, 1, {}, "Pending", pending_message="waiting")
    assert first.status["phase"] == "Pending"
    assert first.status["observedGeneration"] == 1
    by_type = {c["type"]: c for c in first.status["conditions"]}
    assert by_type["Accepted"]["status"] == "True" and by_type["Accepted"]["reason"] == "SpecValid"
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "StagesPending"
    # a valid spec on a new object is the rule, and Ready only names what it waits for
    assert first.events == []
    refused = accept({"weights": {}}, AlpacaModelSpec, 2, first.status, "Pending", "waiting")
    assert [(e.type, e.reason) for e in refused.events] == [("Warning", "InvalidSpec")]
    fixed = accept(GOOD, AlpacaModelSpec, 3, refused.status, "Pending", pending_message="waiting")
    assert [(e.type, e.reason) for e in fixed.events] == [("Normal", "SpecValid")]

    again = accept(GOOD, AlpacaModelSpec, 2, first.status, "Pending", pending_message="waiting")
    assert again.events == []  # nothing moved: no Event
    assert again.status["observedGeneration"] == 2
    assert all(c["observedGeneration"] == 2 for c in again.status["conditions"])


def test_invalid_spec_names_the_field_and_warns():
    bad = {"weights": {"source": "hf://org/m"}, "autoscaling": {"minReplicas": -2}}
    outcome = accept(bad, AlpacaModelSpec, 3, {}, "Pending", pending_message="waiting")
    assert outcome.status["phase"] == "Failed"
    accepted = outcome.status["conditions"][0]
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert "spec.autoscaling.minReplicas" in accepted["message"]
    assert ("Warning", "InvalidSpec") in [(e.type, e.reason) for e in outcome.events]


def test_finetune_without_ready_condition():
    spec = {"baseModel": {"source": "/m"}, "dataset": {"source": "/d.json"}}
    outcome = accept(spec, AlpacaFineTuneSpec, 1, {}, "Suspended")
    assert outcome.status["phase"] == "Suspended"
    assert [c["type"] for c in outcome.status["conditions"]] == ["Accepted"]
