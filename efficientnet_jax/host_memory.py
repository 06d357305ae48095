"""How XLA:CPU's host memory is held: freed after compiles, kept across steps.

Two opposite fixes to glibc's defaults; docs/cpu_kernels.md ("Host memory")
has their measurements on B0's train step. No library does either for us:
jax exposes the compile event and the dispatch switch, glibc the calls.

- After compiling, glibc keeps the memory LLVM freed in its heap, resident but
  unused, which adds to the process's peak; `malloc_trim` after every backend
  compilation hands it back (`release_after_each_compile`).
- Every execution allocates its temporaries afresh. From the asynchronous
  dispatcher's worker thread glibc serves them from a new mmap and unmaps it
  on free, so each step faults in every page of its temporaries again, zeroed
  by the kernel. Executed on the calling thread, from glibc's main heap with
  mmap and trimming off, the pages stay mapped for the next step at the same
  peak (`reuse_execution_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

import jax

# The event jax records once a backend compilation has finished.
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def _libc_function(name: str) -> Any:
  """A glibc function, or None where the C library lacks it (musl, macOS)."""
  library = ctypes.util.find_library('c')
  try:
    return getattr(ctypes.CDLL(library), name) if library else None
  except (OSError, AttributeError):
    return None


def _malloc_trim() -> Any:
  return _libc_function('malloc_trim')


def release_freed_memory() -> bool:
  """Returns freed heap pages to the OS; False where that is not possible."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def _on_duration_event(event: str, duration: float, **unused: Any) -> None:
  del duration, unused
  if event == BACKEND_COMPILE_EVENT:
    release_freed_memory()


@functools.cache  # jax's listeners are process-wide: register exactly once.
def release_after_each_compile() -> None:
  """From now on, trims the heap whenever jax finishes compiling a program."""
  jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def reuse_execution_memory(backend: str = 'cpu') -> bool:
  """Keeps each XLA:CPU execution's buffer pages mapped for the next one.

  Call before the first jax computation: the dispatch switch is read when jax
  creates its CPU client. Executions then run on the calling thread (only
  single-device ones; multi-device programs keep their threads), whose large
  allocations come from glibc's main heap, here grown with brk rather than
  mmap and never trimmed except by `release_freed_memory`. Off CPU the
  device buffers are not host memory and glibc's defaults serve the host
  side (input pipeline, transfers) better, so nothing is changed there.

  Args:
    backend: the backend the process computes on, as the caller decides it
      (asking jax here would create its clients before the switch is set).

  Returns:
    False off CPU or where the C library is not glibc (nothing changed),
    else True.
  """
  if backend != 'cpu':
    return False
  mallopt = _libc_function('mallopt')
  if mallopt is None:
    return False
  # Trimming off first: once mmap is off, a freed block at the top of the heap
  # would otherwise be handed back at once.
  if not (mallopt(_M_TRIM_THRESHOLD, -1) and mallopt(_M_MMAP_MAX, 0)):
    return False
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  return True
