"""Training progress, reported by rank 0: to the AlpacaFineTune's status (server-side apply of
`status.progress`) and to `<outputDir>/progress.json`.

The progress fields are the operator's `Progress` model (operator/alpaca_operator/api/
finetune.py): step, totalSteps, epoch, loss, learningRate, eta ("1h12m"), summary and updatedAt.
Reports are throttled (at most one per interval, plus a last one when training ends). A sink
that fails is logged once and never stops training. The kubernetes client is imported only
when the status sink is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

log = logging.getLogger(__name__)

API_VERSION = "alpaca.dev/v1alpha1"
"""The operator's API group/version (alpaca_operator.api.base.API_VERSION)."""
KIND = "AlpacaFineTune"
PLURAL = "alpacafinetunes"
FIELD_MANAGER = "alpaca-training"
NAME_ENV = "ALPACA_FINETUNE_NAME"
NAMESPACE_ENV = "ALPACA_FINETUNE_NAMESPACE"
KUBECONFIG_ENV = "ALPACA_KUBECONFIG"
LOSS_WINDOW = 10
"""Logged losses averaged for the reported loss (the CRD: "smoothed over the last steps")."""
REQUEST_TIMEOUT = 10.0

Progress = dict[str, Any]
Sink = Callable[[Progress], None]


def format_eta(seconds: float) -> str:
    """A short duration: 1h12m, 3m05s, 42s."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def status_body(name: str, namespace: str, progress: Progress) -> dict[str, Any]:
    """The apply configuration: this field manager owns status.progress and nothing else."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "status": {"progress": progress},
    }


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sink(path: Path) -> Sink:
    """A sink writing the progress to `path` (atomically)."""

    def sink(progress: Progress) -> None:
        write_json_atomic(path, progress)

    return sink


def status_sink(
    name: str, namespace: str, kubeconfig: str | None = None, timeout: float = REQUEST_TIMEOUT
) -> Sink:
    """A sink patching the AlpacaFineTune's status subresource (server-side apply, forced, as
    field manager alpaca-training): in-cluster credentials, or `kubeconfig` when given. The
    client is built on first use, so a missing cluster fails in the sink (logged), not here."""
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
    clients: list[Any] = []

    def api_client() -> Any:
        if not clients:
            import kubernetes

            if kubeconfig:
                clients.append(kubernetes.config.new_client_from_config(config_file=kubeconfig))
            else:
                kubernetes.config.load_incluster_config()
                clients.append(kubernetes.client.ApiClient())
        return clients[0]

    def sink(progress: Progress) -> None:
        api = api_client()
        method, url, headers, body, _ = api.param_serialize(
            "PATCH",
            path,
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={
                "Accept": "application/json",
                "Content-Type": "application/apply-patch+yaml",  # JSON is YAML
            },
            body=status_body(name, namespace, progress),
            auth_settings=["BearerToken"],
        )
        response = api.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout
        )
        response.read()
        if response.status >= 400:
            detail = response.data.decode(errors="replace")[:500] if response.data else ""
            raise RuntimeError(f"PATCH {path}: HTTP {response.status} {detail}")

    return sink


def default_sinks(output_dir: Path, env: Mapping[str, str] | None = None) -> list[Sink]:
    """progress.json always; the status subresource when the fine-tune's name and namespace are
    set and there is a cluster (in a pod, or ALPACA_KUBECONFIG)."""
    env = os.environ if env is None else env
    sinks = [file_sink(output_dir / "progress.json")]
    name, namespace = env.get(NAME_ENV), env.get(NAMESPACE_ENV)
    kubeconfig = env.get(KUBECONFIG_ENV)
    if name and namespace and (kubeconfig or env.get("KUBERNETES_SERVICE_HOST")):
        sinks.append(status_sink(name, namespace, kubeconfig))
    else:
        log.info("progress goes to progress.json only (no fine-tune name/namespace or cluster)")
    return sinks


class ProgressReporter(TrainerCallback):
    """Reports progress from the process that is world rank 0, at most once per `interval`
    seconds (the first log and the end of training always report)."""

    def __init__(
        self,
        sinks: list[Sink],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sinks = list(sinks)
        self.interval = interval
        self.clock = clock
        self._last_report: float | None = None
        self._failed: set[int] = set()
        self._losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self._learning_rate: float | None = None
        self._start: tuple[float, int] | None = None  # (clock, global step) at this run's 1st step
        self.last: Progress | None = None

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # the first step of this run, not on_train_begin: a resumed run's step is known only
        # once the checkpoint's state is loaded, after on_train_begin
        if self._start is None:
            self._start = (self.clock(), state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        if "loss" in logs and math.isfinite(logs["loss"]):
            self._losses.append(float(logs["loss"]))
        if "learning_rate" in logs:
            self._learning_rate = float(logs["learning_rate"])
        if "loss" in logs:
            log.info(
                "step=%d/%d epoch=%.3f loss=%.4f learning_rate=%.3g",
                state.global_step,
                state.max_steps,
                state.epoch or 0.0,
                logs["loss"],
                self._learning_rate or 0.0,
            )
        now = self.clock()
        if self._last_report is None or now - self._last_report >= self.interval:
            self.report(state)

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero:
            self.report(state)

    def progress(self, state: TrainerState) -> Progress:
        """The progress now, in the operator's field names (unknown values left out)."""
        step, total = state.global_step, state.max_steps
        out: Progress = {"step": step, "updatedAt": _now()}
        if total:
            out["totalSteps"] = total
            out["summary"] = f"{step}/{total} ({100 * step // total}%)"
        if state.epoch is not None:
            out["epoch"] = round(float(state.epoch), 4)
        if self._losses:
            out["loss"] = round(sum(self._losses) / len(self._losses), 6)
        if self._learning_rate is not None:
            out["learningRate"] = self._learning_rate
        eta = self._eta_seconds(step, total)
        if eta is not None:
            out["eta"] = format_eta(eta)
        return out

    def _eta_seconds(self, step: int, total: int) -> float | None:
        if not self._start or not total:
            return None
        began, first_step = self._start
        done, elapsed = step - first_step, self.clock() - began
        if done <= 0 or elapsed <= 0:
            return None
        return (total - step) * elapsed / done

    def report(self, state: TrainerState) -> None:
        """Send the progress to every sink now; a failing sink is logged (once) and skipped."""
        self._last_report = self.clock()
        self.last = self.progress(state)
        for index, sink in enumerate(self.sinks):
            try:
                sink(self.last)
            except Exception:
                if index not in self._failed:
                    self._failed.add(index)
                    log.warning("progress report failed (training goes on)", exc_info=True)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
