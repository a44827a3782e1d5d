"""Process-level tuning applied when the CLI starts.

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (at most 32 MiB) with its own ``mmap``
and gives it back with ``munmap`` when freed. PyTorch on CPU allocates and frees the same large
activation buffers (attention maps, feature maps of 512² tiles) at every forward pass, so each
pass page-faults and zero-fills them anew. On virtual machines that reclaim freed pages
aggressively this made a pvt_v2_b0 forward pass at 512² up to 7x slower, and validation on
1024² tiles 10-20x slower (measured; see docs/benchmarks.md). Keeping freed memory in the heap
removes that cost; peak memory is unchanged because it is set by the live buffers anyway.

Python users get the same effect by calling :func:`tune_allocator` once, or by starting Python
with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824``. ``LANDSLIDE_NO_MALLOPT=1`` turns it
off.

:func:`tune_openmp` shortens how long an idle OpenMP thread of PyTorch's libgomp spins before it
sleeps (``GOMP_SPINCOUNT``, default 300,000 iterations). ``predict`` reads windows and
polygonizes in two Python threads beside the forward pass; with long spins the model's idle
threads hold both cores of a small machine while those threads wait. 10,000 spins made the
default command on a 4096² scene about 6 % faster on a 2-core VM (docs/benchmarks.md). It only
takes effect before libgomp is loaded (before ``import torch``); a value the user set wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_done = False

#: ``GOMP_SPINCOUNT`` set by :func:`tune_openmp` (unless the user set it or OMP_WAIT_POLICY)
GOMP_SPINS = "10000"


def _opted_out() -> bool:
    """``LANDSLIDE_NO_MALLOPT`` set (and not ``0``): leave the process settings alone."""
    return os.environ.get("LANDSLIDE_NO_MALLOPT", "") not in ("", "0")


def tune_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Keep freed memory in glibc's heap (no per-allocation mmap, rare trimming).

    Returns True when the settings were applied (Linux with glibc), False otherwise.
    """
    global _done
    if _done:
        return True
    if sys.platform != "linux" or _opted_out():
        return False
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user chose their own glibc settings
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    _done = ok
    return ok


def tune_openmp() -> bool:
    """Set ``GOMP_SPINCOUNT`` (see the module docstring) unless the user chose a spin or wait
    policy, or ``LANDSLIDE_NO_MALLOPT=1``. Returns True when it set the variable; it has an
    effect only if torch (libgomp) is not loaded yet."""
    if _opted_out():
        return False
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    if "torch" in sys.modules:
        return False  # too late: libgomp read its settings when it was loaded
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPINS
    return True
