"""Keep freed host memory in the process so XLA:CPU does not fault its step buffers in again every step.

XLA:CPU allocates the temporaries of each executable run as one block with `posix_memalign` (730 MB for the
MiniLM train step at batch 16, length 128) and frees it when the run ends. The run happens on a worker thread,
and glibc serves a worker thread from its own arena, where a block that large is always a fresh `mmap` and its
free an `munmap`: every step then takes a page fault on each 4 KiB page of the block again (184K faults, about
0.28 CPU-seconds of kernel time per MiniLM step on the 2-core reference machine, a fifth of the step).

With one arena, no `mmap` for large blocks and no trimming of the heap top, a freed block stays mapped and the
next run reuses it. The prices: the process keeps its peak host memory until it exits, which a training or
benchmark process does anyway, and with every thread on one arena XLA's multi-threaded compiles ran ~15%
slower (6.2-6.6 s against 7.0-7.6 s for the MiniLM train step): a loss for a compile-bound test suite, a
gain after a handful of steps. Only glibc has these knobs; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys

# mallopt parameters from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # for M_TRIM_THRESHOLD: never trim (mallopt(3))

OPT_OUT_ENV = "QAJAX_SYSTEM_ALLOCATOR"  # set to 1 to leave the allocator as the system configured it

# Device nodes of NVIDIA, AMD (ROCm) and TPU hosts: there the step's temporaries live in device memory.
ACCELERATOR_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel0")

_applied = False


def steps_run_on_cpu(environ=os.environ, exists=os.path.exists) -> bool:
    """Whether JAX will run the steps on the CPU: $JAX_PLATFORMS names cpu first, or (unset) the host has no
    accelerator device node. Elsewhere the host allocator holds little of a step, and the single arena would
    only slow compiles and host threads."""
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(exists(node) for node in ACCELERATOR_DEVICE_NODES)


def keep_freed_host_memory() -> bool:
    """Configure glibc malloc to reuse freed blocks instead of returning them to the OS; True when it did.

    Call it before the first JAX computation: threads that already have an arena of their own keep it, and
    their large blocks stay `mmap`-backed. Idempotent; a no-op off glibc, on accelerator hosts (see
    `steps_run_on_cpu`) and when $QAJAX_SYSTEM_ALLOCATOR=1.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or not steps_run_on_cpu():
        return False
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
    if not all(libc.mallopt(option, value) == 1 for option, value in settings):
        logging.getLogger(__name__).warning("glibc mallopt refused a setting; host buffers stay mmap-backed")
        return False
    if "jax" in sys.modules:
        logging.getLogger(__name__).debug("keep_freed_host_memory after importing jax: existing threads keep mmap")
    _applied = True
    return True


def applied() -> bool:
    """Whether this process keeps freed host memory (for reports: it moves CPU step times by a fifth)."""
    return _applied
