"""The serve command's local Ray survives Ray's own start-up timeout (alpaca_serving.local_ray).

Real Ray, with a real fault: Ray's own fault injection (`RAY_testing_asio_delay_us`) holds the
GCS's answer to the raylet's registration for 60 s, longer than the 30 s `ray.init()` waits,
in the first attempt only. In the serving group: three Ray start-ups beside the serving app's
would only make the machine busier while that app starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

from tests.run_lock import exclusive
from tests.serving.conftest import SERVING, raised

pytestmark = SERVING

DELAY = "RAY_testing_asio_delay_us"
HELD = "NodeInfoGcsService.grpc_server.RegisterNode=60000000:60000000"  # µs: 60 s

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import ray
    from alpaca_serving import local_ray

    attempts = []

    def ray_init(**kwargs):
        attempts.append(os.environ.get("{delay}"))
        if len(attempts) > 1:  # the fault is the first attempt's only
            os.environ.pop("{delay}", None)
        return ray.init(**kwargs)

    local_ray.init(
        ray_init, backoff=1, num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1]
    )

    @ray.remote
    def answer():
        return 42

    print("attempts", len(attempts), "answer", ray.get(answer.remote()), flush=True)
    ray.shutdown()
    """
).format(delay=DELAY)


def _session(sid: int) -> list[int]:
    """Every process left in the session the script started."""
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == sid:
                left.append(proc.pid)
    return left


def test_a_start_that_ray_gives_up_on_is_started_again():
    tmp = tempfile.mkdtemp(prefix="rayl", dir="/tmp")  # short: Ray's socket paths are limited
    env = dict(os.environ, TMPDIR=tmp, **{DELAY: HELD})
    with exclusive("the local Ray restart test"):  # its Ray start-ups
        proc = subprocess.Popen(
            raised([sys.executable, "-c", SCRIPT, f"{tmp}/r"]),  # as the tier's Ray start-ups
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            # the second attempt, or (on a machine busy enough to fail it too) a later one
            assert re.search(r"^attempts [2-5] answer 42$", out, re.M), out + err[-3000:]
            assert "starting Ray again in 1s (attempt 2 of 5)" in err, err[-3000:]
            # the first attempt's GCS, raylet and helpers were stopped, the second's by ray.shutdown
            deadline = time.monotonic() + 30
            while left := _session(proc.pid):
                assert time.monotonic() < deadline, f"processes left: {left}"
                time.sleep(0.5)
        finally:
            for pid in _session(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            shutil.rmtree(tmp, ignore_errors=True)
