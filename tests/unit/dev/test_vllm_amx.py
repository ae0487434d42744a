"""The vLLM plugin is registered where vLLM looks for general plugins, and runs."""

from importlib.metadata import entry_points

import pytest


def test_request_amx_is_a_registered_vllm_general_plugin():
    found = {ep.name: ep for ep in entry_points(group="vllm.general_plugins")}
    assert found["alpaca_request_amx"].value == "alpaca_dev.vllm_amx:request_amx"
    pytest.importorskip("torch")
    found["alpaca_request_amx"].load()()  # idempotent; a no-op without AMX
