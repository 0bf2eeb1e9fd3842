"""keep_freed_host_memory: a jitted run with a large temporary stops faulting its pages in on every call."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from qajax.host_memory import steps_run_on_cpu

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's"
)

PAGES_PER_TEMPORARY = 64 * 1024 * 1024 // 4096  # the probe's 4096 x 4096 float32 product, in 4 KiB pages

_PROBE = textwrap.dedent(
    """
    import json, os, resource, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    from qajax.host_memory import keep_freed_host_memory
    applied = keep_freed_host_memory() if sys.argv[1] == "keep" else False
    import jax, jax.numpy as jnp
    # Like a train step: a large temporary inside the run (the 64 MiB product, far above glibc's largest
    # mmap threshold), a small output.
    chain = jax.jit(lambda a, v: (a @ a.T) @ v)  # two products: the first one's result is not fused away
    a, v = jnp.ones((4096, 32), jnp.float32), jnp.ones((4096, 1), jnp.float32)
    for _ in range(10):  # the heap grows to about its steady size
        chain(a, v).block_until_ready()
    faults = []
    for _ in range(15):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        chain(a, v).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # The median call: glibc's heap still creeps now and then (a small block lands behind the big one).
    faults = sorted(faults)[len(faults) // 2]
    print(json.dumps({"applied": applied, "faults_per_call": faults}))
    """
)


def _probe(mode: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_step_buffers_are_reused_instead_of_faulted_in_again():
    system = _probe("system")
    kept = _probe("keep")
    assert kept["applied"] is True
    # The system allocator maps each run's 64 MiB temporary afresh (a fault per page); ours reuses the block.
    assert system["faults_per_call"] > 0.5 * PAGES_PER_TEMPORARY, system
    assert kept["faults_per_call"] < 0.05 * PAGES_PER_TEMPORARY, kept


def test_opt_out_leaves_the_allocator_alone():
    env = dict(os.environ, QAJAX_SYSTEM_ALLOCATOR="1")
    result = _probe("keep", env)
    assert result["applied"] is False
    assert result["faults_per_call"] > 0.5 * PAGES_PER_TEMPORARY, result


@pytest.mark.parametrize(
    "platforms, nodes, expected",
    [
        ("cpu", {"/dev/nvidiactl"}, True),  # told to run on the CPU: the GPU node does not matter
        ("cuda,cpu", set(), False),
        ("tpu", set(), False),
        ("", set(), True),  # unset: decided by the device nodes
        ("", {"/dev/nvidiactl"}, False),
        ("", {"/dev/accel0"}, False),
    ],
)
def test_applies_only_where_the_steps_run_on_the_cpu(platforms, nodes, expected):
    environ = {"JAX_PLATFORMS": platforms} if platforms else {}
    assert steps_run_on_cpu(environ, exists=lambda path: path in nodes) is expected
