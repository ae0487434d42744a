"""The serve command hands Serve the operator's application entry and follows the app's status:
a failed deploy ends it with Serve's message (the real command is the serving tier's
`served_fast`; here only the loop, on statuses as Serve reports them)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from alpaca_serving import __main__ as command
from alpaca_serving import serve_config


def _statuses(*states: str | None) -> Any:
    """`serve.status` answering each state in turn (None: no application yet)."""
    answers = iter(states)

    def status() -> SimpleNamespace:
        state = next(answers)
        apps = {}
        if state is not None:
            apps[serve_config.APP_NAME] = SimpleNamespace(
                status=SimpleNamespace(value=state), message=f"the build said why ({state})"
            )
        return SimpleNamespace(applications=apps)

    return status


def test_a_failed_deploy_ends_the_command_with_serves_message(capsys):
    status = _statuses(None, "DEPLOYING", "DEPLOY_FAILED")
    assert command.watch(status, "http://127.0.0.1:8000/v1", every=0) == 1
    err = capsys.readouterr().err
    assert "failed to deploy: the build said why (DEPLOY_FAILED)" in err
    assert "serving at" not in err


def test_running_is_announced_once_and_the_command_keeps_serving(capsys):
    status = _statuses("DEPLOYING", "RUNNING", "RUNNING", "UNHEALTHY", "RUNNING")
    with pytest.raises(StopIteration):  # the fake's answers ran out: it was still watching
        command.watch(status, "http://127.0.0.1:8000/v1", every=0)
    assert capsys.readouterr().err.count("serving at http://127.0.0.1:8000/v1") == 1


def test_the_command_deploys_the_operators_entry():
    """What the command hands Serve is the serveConfigV2 entry the operator renders."""
    pytest.importorskip("ray.serve")
    from ray.serve.schema import ServeDeploySchema

    from alpaca_serving.config import ServingConfig

    config = ServingConfig.model_validate(
        {"model_path": "/models/m", "served_model_name": "m", "accelerator": "cpu"}
    )
    schema = ServeDeploySchema(applications=[serve_config.application_entry(config)])
    [app] = schema.applications
    assert (app.name, app.route_prefix) == ("alpaca", "/")
    assert app.import_path == "alpaca_serving.app:build_app"
    assert ServingConfig.model_validate(app.args) == config
