"""Batch chunking: a computation of independent examples run a chunk at a time.

Used by the CPU depthwise kernel's gradient (chunks that fit a core's L2) and
by inference on CPU (a block's intermediates for one chunk stay in L3;
docs/cpu_kernels.md, "Inference on batch chunks").
"""

from __future__ import annotations

from typing import Callable

import jax


def batch_chunk(batch: int, per_example_bytes: int, budget_bytes: int) -> int:
  """The largest divisor of batch whose examples take at most budget_bytes;
  1 when even one example takes more."""
  return max((d for d in range(1, batch + 1)
              if batch % d == 0 and d * per_example_bytes <= budget_bytes),
             default=1)


def map_batch_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                     chunk: int) -> jax.Array:
  """fn of consecutive chunks of x's examples, one chunk after the other
  (a loop, not a vmap), concatenated: for fn whose examples are independent
  (docs/cpu_kernels.md, "Inference on batch chunks")."""
  if chunk >= x.shape[0]:
    return fn(x)
  chunks = x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])
  out = jax.lax.map(fn, chunks)
  return out.reshape(x.shape[0], *out.shape[2:])


