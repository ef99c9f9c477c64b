"""Keep freed CPU memory in the process for reuse (glibc's malloc), instead of returning it.

PyTorch allocates CPU tensors with malloc. By default glibc serves blocks above a (dynamic)
threshold with mmap and gives them back to the kernel on free, and trims the heap's top; a
training step then frees its activations and the next step faults the same amount of fresh,
zero-filled pages back in. On the 2-core development VM that kernel work was a third of a small
CNN's cross-entropy step and half of an AdaLFL iteration (docs/benchmarks.md). With mmap limited
to blocks over 32 MiB and trimming off, the heap stays at the step's peak and is reused.

The cost: the process holds on to its peak heap until it exits, which a training job reaches on
every step anyway. ``runtime.cpu_memory=system`` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum; larger blocks are still mmap'd
TRIM_THRESHOLD = 2**31 - 1  # never trim the heap's top (mallopt takes a C int)

CHOICES = ("reuse", "system")


def configure_cpu_memory(setting: str) -> bool:
    """Apply ``runtime.cpu_memory=<setting>``; True when glibc took the reuse settings."""
    if setting == "system":
        return False
    if setting != "reuse":
        raise ValueError(f"cpu_memory must be one of {CHOICES}, got {setting!r}")
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
