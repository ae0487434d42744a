import datetime

import pytest

from alpaca_operator import conditions as cond
from alpaca_operator.api import AlpacaModelSpec
from alpaca_operator.conditions import CAPACITY, READY, SERVING, WEIGHTS, Verdict
from alpaca_operator.observe import model as observe

SPEC = AlpacaModelSpec.model_validate({"weights": {"source": "hf://o/m"}, "resources": {"gpus": 2}})


def _node(gpus: int, **labels: str) -> dict:
    return {
        "metadata": {"labels": labels},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


def test_capacity_on_existing_nodes():
    children = observe.ModelChildren(nodes=[_node(1, pool="gpu"), _node(8, pool="other")])
    v = observe.capacity(SPEC, children, {"pool": "gpu"})
    assert (v.status, v.reason) == ("False", "InsufficientGPU")
    assert "largest allocatable on the 1 matching node(s) is 1" in v.message
    children.nodes.append(_node(4, pool="gpu"))
    assert observe.capacity(SPEC, children, {"pool": "gpu"}).reason == "NodesAvailable"
    assert observe.capacity(SPEC, children, {"pool": "none"}).reason == "WaitingForNodes"


def test_fill_failure_reason_parsing():
    assert observe._fill_failure("DownloadStalled: no bytes for 120s from http://x") == (
        "DownloadStalled",
        "no bytes for 120s from http://x",
    )
    assert observe._fill_failure("Traceback: boom")[0] == "Traceback"
    assert observe._fill_failure("oops something")[0] == "FillFailed"
    assert observe._fill_failure(None)[0] == "FillFailed"


def test_progress_in_the_downloading_message():
    job = {
        "metadata": {
            "annotations": {
                "alpaca.dev/bytes-done": str(3 * 2**30),
                "alpaca.dev/bytes-total": str(12 * 2**30),
            }
        },
        "status": {"active": 1},
    }
    state = observe.CacheState(pvc={"metadata": {"annotations": {}}}, fill_job=job)
    v = observe.weights(SPEC.weights, state)
    assert v.reason == "Downloading"
    assert "3.0 GiB of 12.0 GiB (25%)" in v.message


def test_phase_order_and_degraded():
    ok = Verdict("True", "X", "")
    waiting = Verdict("False", "Waiting", "")
    stages = {CAPACITY: ok, WEIGHTS: waiting, SERVING: waiting, READY: waiting}
    assert observe.phase(stages, was_ready=False) == "Downloading"
    stages = {CAPACITY: ok, WEIGHTS: ok, SERVING: waiting, READY: waiting}
    assert observe.phase(stages, was_ready=True) == "Degraded"
    stages[SERVING] = Verdict("False", "KubeRayMissing", "")
    assert observe.phase(stages, was_ready=False) == "Failed"


def test_serving_deadline_counts_from_weights_ready():
    now = datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.UTC)
    previous = [
        {"type": SERVING, "status": "False", "lastTransitionTime": "2026-01-01T08:00:00Z"},
        {"type": WEIGHTS, "status": "True", "lastTransitionTime": "2026-01-01T11:50:00Z"},
    ]
    stages = {
        CAPACITY: Verdict("True", "a", ""),
        WEIGHTS: Verdict("True", "b", ""),
        SERVING: Verdict("False", "EngineLoading", "loading"),
    }
    assert observe.with_deadlines(stages, previous, now)[SERVING].reason == "EngineLoading"
    later = now + datetime.timedelta(minutes=31)
    assert observe.with_deadlines(stages, previous, later)[SERVING].reason == "ServingTimeout"


def test_replicas_from_the_active_cluster():
    rs = {
        "status": {
            "activeServiceStatus": {
                "rayClusterStatus": {"desiredWorkerReplicas": 3, "readyWorkerReplicas": 2}
            }
        }
    }
    assert observe.replicas(rs) == (3, 2)
    assert observe.replicas(None) == (0, 0)


def _fill_state(annotations: dict, status: dict, message: str | None = None):
    job = {"metadata": {"annotations": annotations}, "status": status}
    return observe.CacheState(
        pvc={"metadata": {"annotations": {}}}, fill_job=job, fill_pod_message=message
    )


def test_an_attempt_that_failed_is_retrying_with_its_reason():
    state = _fill_state(
        {"alpaca.dev/bytes-done": "10", "alpaca.dev/bytes-total": "100"},
        {"active": 1, "failed": 1},
        "DownloadStalled: http://x/model.safetensors: no bytes arrived in time",
    )
    v = observe.weights(SPEC.weights, state)
    assert (v.status, v.reason) == ("False", "DownloadRetrying")
    assert "Attempt 1 to fill" in v.message
    assert "(DownloadStalled: http://x/model.safetensors: no bytes arrived in time)" in v.message
    assert "at most 5 attempts" in v.message


def test_the_cli_phase_after_the_download_is_the_reason():
    for phase, reason in (("recovering", "Recovering"), ("converting", "Converting")):
        state = _fill_state({"alpaca.dev/fill-phase": phase}, {"active": 1})
        assert observe.weights(SPEC.weights, state).reason == reason


def test_every_cli_failure_reason_is_a_failure_reason_of_the_status():
    from alpaca_operator.conditions import FAILURE_REASONS
    from alpaca_weights import errors

    assert set(errors.REASONS) <= FAILURE_REASONS


def test_weights_wait_for_every_adapter_cache():
    spec = AlpacaModelSpec.model_validate(
        {
            "weights": {"source": "hf://o/m"},
            "adapters": [{"name": "sql", "source": "s3://b/sql"}],
        }
    )
    filled = observe.CacheState(pvc={"metadata": {"annotations": {"alpaca.dev/filled": "true"}}})
    children = observe.ModelChildren(cache=filled)
    v = observe.model_weights(spec, children)
    assert (v.status, v.reason) == ("False", "CacheCreating")
    assert v.message.startswith("Adapter sql: Creating the weights cache volume weights-sql-")
    children.adapter_caches["sql"] = filled
    v = observe.model_weights(spec, children)
    assert (v.status, v.reason) == ("True", "CacheFilled")
    assert v.message.endswith("Adapters filled: sql.")


def test_an_adapter_cache_shares_the_models_credentials_and_storage():
    spec = AlpacaModelSpec.model_validate(
        {
            "weights": {
                "source": "s3://b/m",
                "credentialsSecret": "s3-creds",
                "cache": {"storageClassName": "fast", "accessMode": "ReadWriteOnce"},
            },
            "adapters": [{"name": "sql", "source": "s3://b/sql"}],
        }
    )
    w = spec.adapters[0].as_weights(spec.weights)
    assert (w.credentials_secret, w.cache.storage_class_name, w.cache.access_mode) == (
        "s3-creds",
        "fast",
        "ReadWriteOnce",
    )
    assert w.cache.size == "2Gi"


# --- every stage's reasons, table-driven ------------------------------------------------

KARPENTER = AlpacaModelSpec.model_validate(
    {
        "weights": {"source": "hf://o/m"},
        "resources": {"gpus": 1},
        "capacity": {"provisioner": "karpenter", "karpenter": {"nodeClassRef": {"name": "gpu"}}},
    }
)


def _pool(status: str | None) -> dict:
    conds = [] if status is None else [{"type": "Ready", "status": status, "message": "no quota"}]
    return {"metadata": {"name": "pool"}, "status": {"conditions": conds}}


@pytest.mark.parametrize(
    ("crds", "pool", "reason", "ok"),
    [
        (set(), None, cond.NODEPOOL_CRD_MISSING, False),
        ({"nodepools.karpenter.sh"}, None, cond.NODEPOOL_CREATING, False),
        ({"nodepools.karpenter.sh"}, _pool(None), cond.WAITING_FOR_NODEPOOL, False),
        ({"nodepools.karpenter.sh"}, _pool("False"), cond.NODEPOOL_REJECTED, False),
        ({"nodepools.karpenter.sh"}, _pool("True"), cond.NODEPOOL_READY, True),
    ],
)
def test_karpenter_capacity(crds, pool, reason, ok):
    v = observe.capacity(KARPENTER, observe.ModelChildren(crds=crds, nodepool=pool), {})
    assert (v.reason, v.ok) == (reason, ok)
    if reason == cond.NODEPOOL_REJECTED:
        assert "no quota" in v.message


def test_cpu_only_needs_no_gpu_node():
    spec = AlpacaModelSpec.model_validate({"weights": {"source": "/m"}, "resources": {"gpus": 0}})
    v = observe.capacity(spec, observe.ModelChildren(), {})
    assert (v.reason, v.ok) == (cond.CPU_ONLY, True)


def _job(annotations: dict | None = None, status: dict | None = None, *conditions: str) -> dict:
    conds = [{"type": c, "status": "True"} for c in conditions]
    return {
        "metadata": {"annotations": annotations or {}},
        "status": {**(status or {}), "conditions": conds},
    }


@pytest.mark.parametrize(
    ("pvc", "job", "message", "reason"),
    [
        (None, None, None, cond.CACHE_CREATING),
        ({"metadata": {}}, None, None, cond.FILL_PENDING),
        ({"metadata": {}}, _job(), None, cond.FILL_PENDING),
        ({"metadata": {}}, _job(status={"active": 1}), None, cond.DOWNLOADING),
        ({"metadata": {}}, _job({"alpaca.dev/fill-phase": "verifying"}), None, cond.VERIFYING),
        ({"metadata": {}}, _job({}, {}, "Complete"), None, cond.CACHE_VERIFYING),
        (
            {"metadata": {}},
            _job({}, {"failed": 1}, "Failed"),
            "SourceNotFound: 404",
            "SourceNotFound",
        ),
        ({"metadata": {}}, _job({}, {"failed": 1}, "Failed"), None, cond.FILL_FAILED),
        # a crash's log tail that happens to start with `Word:` is not one of the CLI's reasons
        (
            {"metadata": {}},
            _job({}, {"failed": 5}, "Failed"),
            "INFO: loading shard 3",
            cond.FILL_FAILED,
        ),
        (
            {"metadata": {"annotations": {"alpaca.dev/filled": "true"}}},
            _job({}, {"failed": 1}, "Failed"),
            None,
            cond.CACHE_FILLED,
        ),
    ],
)
def test_weights_stage(pvc, job, message, reason):
    state = observe.CacheState(pvc=pvc, fill_job=job, fill_pod_message=message)
    v = observe.weights(SPEC.weights, state)
    assert v.reason == reason
    assert v.ok == (reason == cond.CACHE_FILLED)


def test_a_failed_fill_is_a_failure_and_keeps_what_the_pod_said():
    state = observe.CacheState(
        pvc={"metadata": {}},
        fill_job=_job({}, {"failed": 5}, "Failed"),
        fill_pod_message="INFO: loading shard 3",
    )
    v = observe.weights(SPEC.weights, state)
    assert "failed: INFO: loading shard 3. It is filled again when " in v.message
    assert v.reason in cond.FAILURE_REASONS
    empty = observe.CacheState(pvc={"metadata": {}}, fill_job=_job({}, {}, "Failed"))
    assert "see its pod logs" in observe.weights(SPEC.weights, empty).message


def _rayservice(app: str = "", ready: str | None = None) -> dict:
    status: dict = {"activeServiceStatus": {"applicationStatuses": {}}}
    if app:
        status["activeServiceStatus"]["applicationStatuses"]["alpaca"] = {
            "status": app,
            "message": "boom",
        }
    if ready:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    return {"status": status}


@pytest.mark.parametrize(
    ("crds", "weights_ok", "rs", "reason"),
    [
        (set(), True, _rayservice(), cond.KUBERAY_MISSING),
        ({"rayservices.ray.io"}, False, None, cond.WAITING_FOR_WEIGHTS),
        ({"rayservices.ray.io"}, True, None, cond.DEPLOYING),
        ({"rayservices.ray.io"}, True, _rayservice(), cond.WAITING_FOR_RAY_CLUSTER),
        ({"rayservices.ray.io"}, True, _rayservice("DEPLOYING"), cond.ENGINE_LOADING),
        ({"rayservices.ray.io"}, True, _rayservice("DEPLOY_FAILED"), cond.SERVE_DEPLOY_FAILED),
        ({"rayservices.ray.io"}, True, _rayservice("UNHEALTHY", "True"), cond.SERVE_DEPLOY_FAILED),
        ({"rayservices.ray.io"}, True, _rayservice("RUNNING", "True"), cond.ENDPOINT_SERVING),
    ],
)
def test_serving_stage(crds, weights_ok, rs, reason):
    children = observe.ModelChildren(crds=crds, rayservice=rs)
    assert observe.serving(SPEC, children, weights_ok).reason == reason


def test_ready_carries_the_first_waiting_stage_and_the_phase_follows():
    ok = Verdict("True", "X", "")
    stages = {
        CAPACITY: ok,
        WEIGHTS: Verdict("False", cond.DOWNLOADING, "50%"),
        SERVING: Verdict("False", cond.WAITING_FOR_WEIGHTS, ""),
    }
    ready = observe.ready(stages, "http://e")
    assert (ready.reason, ready.message) == (cond.DOWNLOADING, f"{WEIGHTS}: 50%")
    stages[WEIGHTS] = ok
    stages[SERVING] = Verdict("False", cond.ENGINE_LOADING, "")
    assert observe.phase({**stages, READY: observe.ready(stages, "e")}, False) == "Deploying"
    stages[CAPACITY] = Verdict("False", cond.WAITING_FOR_NODES, "")
    assert observe.phase({**stages, READY: observe.ready(stages, "e")}, False) == "Provisioning"
    stages = {CAPACITY: ok, WEIGHTS: ok, SERVING: ok}
    ready = observe.ready(stages, "http://e")
    assert (ready.reason, ready.message) == (cond.ALL_STAGES_READY, "Serving at http://e/v1.")
    assert observe.phase({**stages, READY: ready}, False) == "Ready"


def test_failures_and_waiting_for_weights_never_time_out():
    now = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    long_ago = "2026-01-01T00:00:00Z"
    deadlined = (CAPACITY, WEIGHTS, SERVING)
    previous = [{"type": t, "status": "False", "lastTransitionTime": long_ago} for t in deadlined]
    stages = {
        CAPACITY: Verdict("False", cond.INSUFFICIENT_GPU, ""),
        WEIGHTS: Verdict("False", cond.DOWNLOADING, "slow"),
        SERVING: Verdict("False", cond.WAITING_FOR_WEIGHTS, ""),
    }
    out = observe.with_deadlines(stages, previous, now)
    assert [out[t].reason for t in deadlined] == [
        cond.INSUFFICIENT_GPU,
        cond.WEIGHTS_TIMEOUT,
        cond.WAITING_FOR_WEIGHTS,
    ]
    assert "deadline of 180 minutes" in out[WEIGHTS].message
    assert out[WEIGHTS].message.endswith(": slow")
