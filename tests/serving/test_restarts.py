"""The Serve controller can restart without restarting the engine. On a RayService it does
whenever Ray's memory monitor kills it on a full head, or the head's processes restart; the new
controller adopts the running replicas by asking each where it logs. vLLM's engine start
applied its own logging dictConfig in the LLMServer replica, which closes every handler in the
process, Serve's replica log included, so the adoption failed (`'NoneType' object has no
attribute 'baseFilename'`), the controller stopped the replica, and the model reloaded: an
outage per controller restart. Seen on the real node with the head OOM-killing its controller."""

from __future__ import annotations

import os
import time
from typing import Any

import openai

from tests.serving.conftest import SERVING, Served

pytestmark = SERVING


def _llm_replica_actors() -> dict[str, str]:
    """actor id -> state, for every LLMServer replica actor this cluster has had (from the
    GCS: this Ray runs no dashboard for the state API)."""
    from ray._private.state import actors

    return {
        actor_id: info["State"]
        for actor_id, info in actors().items()
        if "AlpacaLLMServer" in info["ActorClassName"] or "AlpacaLLMServer" in info["Name"]
    }


def _app_running() -> bool:
    from ray import serve

    app = serve.status().applications.get("alpaca")
    return app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING"


def _controller() -> tuple[Any, int]:
    """Serve's controller actor and its process id."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    pid = ray.get(controller.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
    return controller, pid


def test_a_restarted_serve_controller_keeps_the_running_engine(served: Served):
    import ray

    known = _llm_replica_actors()
    before = {i for i, state in known.items() if state == "ALIVE"}
    assert len(before) == 1, known
    controller, old_pid = _controller()

    ray.kill(controller, no_restart=False)  # as the memory monitor does: Ray restarts it

    deadline = time.monotonic() + 300
    new_pid = None
    while new_pid in (None, old_pid):
        assert time.monotonic() < deadline, "the Serve controller did not come back"
        time.sleep(2)
        try:
            _, new_pid = _controller()
        except Exception:
            new_pid = None
    # the new controller has adopted the replicas (or given up on them) once it reports again
    while not _app_running():
        assert time.monotonic() < deadline, "the app did not report RUNNING after the restart"
        time.sleep(2)
    time.sleep(10)  # a failed adoption stops the replica within the controller's next loops

    client = openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=2, timeout=120)
    answer = client.completions.create(model=served.model, prompt="Hello", max_tokens=4)
    assert answer.choices[0].text is not None
    actors = _llm_replica_actors()
    assert {i for i, state in actors.items() if state == "ALIVE"} == before, actors
    assert set(actors) == set(known), f"a replica was started after the restart: {actors}"
