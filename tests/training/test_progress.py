"""Progress reports: throttling, the fields (the operator's Progress model), the sinks, the
server-side apply request, and a failing sink that never stops training."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from transformers import TrainerState

from alpaca_operator.api.base import API_VERSION
from alpaca_operator.api.finetune import PLURAL, Progress
from alpaca_training import progress as progress_mod
from alpaca_training.progress import (
    ProgressReporter,
    default_sinks,
    file_sink,
    format_eta,
    status_body,
    status_sink,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _state(step: int, total: int = 20, rank0: bool = True) -> TrainerState:
    state = TrainerState(global_step=step, max_steps=total, epoch=step / 10)
    state.is_world_process_zero = rank0
    return state


def test_reports_are_throttled_to_the_interval_plus_the_end():
    clock, reports = FakeClock(), []
    reporter = ProgressReporter([reports.append], interval=10, clock=clock)
    reporter.on_step_begin(None, _state(0), None)
    for now, step in [(0.5, 1), (5, 2), (9.9, 3), (10.5, 4), (12, 5), (20.4, 6), (21, 7)]:
        clock.now = now
        reporter.on_log(None, _state(step), None, logs={"loss": 10.0 - step, "learning_rate": 1e-4})
    clock.now = 22
    reporter.on_train_end(None, _state(8), None)
    assert [r["step"] for r in reports] == [1, 4, 7, 8]  # 20.4 is < 10 s after 10.5
    at_4 = reports[1]
    assert at_4["eta"] == format_eta(16 * 10.5 / 4) == "42s"  # 4 steps in 10.5 s, 16 to go
    assert at_4["loss"] == pytest.approx((9 + 8 + 7 + 6) / 4)  # mean of the losses logged so far
    assert at_4["summary"] == "4/20 (20%)"


def test_interval_zero_reports_every_log_and_only_rank_zero_reports():
    reports = []
    reporter = ProgressReporter([reports.append], interval=0)
    reporter.on_step_begin(None, _state(0), None)
    for step in range(1, 4):
        reporter.on_log(None, _state(step), None, logs={"loss": 1.0})
    assert [r["step"] for r in reports] == [1, 2, 3]
    other = ProgressReporter([reports.append], interval=0)
    other.on_log(None, _state(5, rank0=False), None, logs={"loss": 1.0})
    other.on_train_end(None, _state(5, rank0=False), None)
    assert len(reports) == 3


def test_fields_are_the_operators_progress_model():
    clock, reports = FakeClock(), []
    reporter = ProgressReporter([reports.append], interval=0, clock=clock)
    reporter.on_train_begin(None, _state(0, total=1000), None)  # before the resume
    reporter.on_step_begin(None, _state(100, total=1000), None)  # resumed at step 100
    clock.now = 60.0
    reporter.on_log(None, _state(160, total=1000), None, logs={"loss": 1.25, "learning_rate": 2e-5})
    [progress] = reports
    assert set(progress) == {
        "step",
        "totalSteps",
        "epoch",
        "loss",
        "learningRate",
        "eta",
        "summary",
        "updatedAt",
    }
    assert progress["eta"] == "14m00s"  # 840 steps at 1 step/s (counted from the resumed step)
    Progress.model_validate(progress)  # the operator's model (extra fields forbidden) takes it
    body = status_body("ft", "ns", progress)
    assert body == {
        "apiVersion": API_VERSION,
        "kind": "AlpacaFineTune",
        "metadata": {"name": "ft", "namespace": "ns"},
        "status": {"progress": progress},
    }
    assert (progress_mod.API_VERSION, progress_mod.PLURAL) == (API_VERSION, PLURAL)


def test_format_eta():
    assert [format_eta(s) for s in (0, 42.4, 185, 4320, 90061)] == [
        "0s",
        "42s",
        "3m05s",
        "1h12m",
        "25h01m",
    ]


def test_a_failing_sink_is_logged_once_and_training_goes_on(caplog):
    calls, reports = [], []

    def broken(progress):
        calls.append(progress["step"])
        raise ConnectionError("apiserver unreachable")

    reporter = ProgressReporter([broken, reports.append], interval=0)
    with caplog.at_level(logging.WARNING, logger="alpaca_training.progress"):
        for step in (1, 2, 3):
            reporter.on_log(None, _state(step), None, logs={"loss": 1.0})
    assert calls == [1, 2, 3] and [r["step"] for r in reports] == [1, 2, 3]
    failures = [r for r in caplog.records if "progress report failed" in r.getMessage()]
    assert len(failures) == 1


def test_file_sink_writes_atomically(tmp_path: Path):
    sink = file_sink(tmp_path / "out" / "progress.json")
    sink({"step": 1})
    sink({"step": 2, "loss": 0.5})
    assert json.loads((tmp_path / "out" / "progress.json").read_text()) == {"step": 2, "loss": 0.5}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["progress.json"]


def test_default_sinks(tmp_path: Path):
    assert len(default_sinks(tmp_path, {})) == 1  # progress.json only
    named = {"ALPACA_FINETUNE_NAME": "ft", "ALPACA_FINETUNE_NAMESPACE": "ns"}
    assert len(default_sinks(tmp_path, named)) == 1  # no cluster
    assert len(default_sinks(tmp_path, named | {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})) == 2
    assert len(default_sinks(tmp_path, named | {"ALPACA_KUBECONFIG": "/kc"})) == 2


class _Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    status: ClassVar[int] = 200

    def do_PATCH(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).requests.append(
            {
                "path": self.path,
                "content_type": self.headers["Content-Type"],
                "auth": self.headers.get("Authorization"),
                "body": json.loads(self.rfile.read(length)),
            }
        )
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_apiserver(tmp_path: Path) -> Iterator[tuple[type[_Recorder], Path]]:
    """An HTTP server on loopback that records requests, and a kubeconfig pointing at it."""
    handler = type("Recorder", (_Recorder,), {"requests": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "trainer-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    yield handler, kubeconfig
    server.shutdown()
    server.server_close()
    thread.join()


def test_status_sink_sends_a_forced_server_side_apply(fake_apiserver, caplog):
    handler, kubeconfig = fake_apiserver
    sink = status_sink("alpaca-7b", "research", str(kubeconfig))
    progress = {"step": 3, "totalSteps": 9, "summary": "3/9 (33%)"}
    sink(progress)
    [request] = handler.requests
    assert request["path"] == (
        "/apis/alpaca.dev/v1alpha1/namespaces/research/alpacafinetunes/alpaca-7b/status"
        "?fieldManager=alpaca-training&force=true"
    )
    assert request["content_type"] == "application/apply-patch+yaml"
    assert request["auth"] == "Bearer trainer-token"
    assert request["body"] == status_body("alpaca-7b", "research", progress)

    handler.status = 403  # say, RBAC: a failure is an exception for the reporter to log
    with pytest.raises(RuntimeError, match="HTTP 403"):
        sink(progress)
    reporter = ProgressReporter([sink], interval=0)
    with caplog.at_level(logging.WARNING, logger="alpaca_training.progress"):
        reporter.on_log(None, _state(4), None, logs={"loss": 1.0})
        reporter.on_log(None, _state(5), None, logs={"loss": 1.0})
    assert len(handler.requests) == 4
    assert sum("progress report failed" in r.getMessage() for r in caplog.records) == 1


def test_status_sink_without_a_cluster_fails_in_the_sink_only(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    sink = status_sink("ft", "ns")  # in-cluster config, but not in a pod
    reporter = ProgressReporter([sink], interval=0)
    reporter.on_log(None, _state(1), None, logs={"loss": 1.0})  # logged, not raised
    assert reporter.last is not None and reporter.last["step"] == 1
