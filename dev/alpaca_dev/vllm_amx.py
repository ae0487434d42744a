"""A vLLM general plugin (loaded by vLLM in every process it starts, workers included).

`request_amx`: on CPUs with AMX, Linux raises SIGILL in a process that uses AMX tiles without
having asked for them (arch_prctl ARCH_REQ_XCOMP_PERM). oneDNN asks on first use; a vLLM CPU
kernel reached first may not. Asking at process start is what torch offers for this
(`torch._C._cpu._init_amx`); on other CPUs it does nothing. Registered under the
`vllm.general_plugins` entry point group in pyproject.toml.
"""

from __future__ import annotations


def request_amx() -> None:
    import torch

    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    if init is not None and torch.cpu._is_amx_tile_supported():
        init()
