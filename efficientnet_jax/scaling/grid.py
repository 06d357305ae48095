"""The search space and the single-dimension solvers (pure Python, no jax).

`coefficient_grid` enumerates the paper's step-1 grid (Sec. 3.3): every
(alpha, beta, gamma) >= 1 on a lattice of `step` whose FLOPs factor
alpha * beta^2 * gamma^2 lies within a relative `tolerance` of `target`.
`solve` finds the coefficient of one scaling strategy (width, depth,
resolution or compound phi) whose network's multiply-adds, as
`arch.count_macs` counts them, come closest to a target, by bisection: the
count is a non-decreasing step function of each coefficient (channels round
to multiples of 8, repeats round up, resolution is an integer). `tidy`
then names the solved network by the shortest decimal that builds it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from efficientnet_jax import errors

STRATEGIES = ('width', 'depth', 'resolution', 'compound')
# Bisection: 60 halvings pin a coefficient in [1, 2^k] far below any rounding
# step; the upper bound doubles at most this often before a target is
# declared out of reach (width 2^12 is beyond any network validate accepts).
BISECTION_STEPS = 60
MAX_DOUBLINGS = 12


@dataclasses.dataclass(frozen=True, order=True)
class Coefficients:
  """Depth, width and resolution multipliers per unit of phi (paper Eq. 3)."""
  alpha: float
  beta: float
  gamma: float

  @property
  def flops_factor(self) -> float:
    return self.alpha * self.beta**2 * self.gamma**2


def lattice(step: float, upper: float) -> list[float]:
  """1, 1 + step, 1 + 2 step, ... up to `upper` (rounded to the step's digits)."""
  digits = max(0, -math.floor(math.log10(step))) + 2
  count = int(math.floor((upper - 1.0) / step + 1e-9)) + 1
  return [round(1.0 + index * step, digits) for index in range(count)]


def coefficient_grid(step: float, tolerance: float,
                     target: float = 2.0) -> list[Coefficients]:
  """Every lattice point with |alpha beta^2 gamma^2 / target - 1| <= tolerance.

  The constraint bounds the lattice: with the other two at 1, alpha <=
  target (1 + tolerance) and beta, gamma <= its square root.

  Raises:
    errors.ConfigError: a step, tolerance or target that cannot give a grid,
      or a grid that nothing satisfies.
  """
  if not step > 0:
    raise errors.ConfigError(f'config.search.step={step!r}: use a step > 0, '
                             'e.g. 0.05.')
  if not tolerance >= 0:
    raise errors.ConfigError(f'config.search.tolerance={tolerance!r}: use a '
                             'relative tolerance >= 0, e.g. 0.05.')
  if not target >= 1:
    raise errors.ConfigError(
        f'config.search.target={target!r}: alpha, beta, gamma >= 1 give a '
        'FLOPs factor >= 1; use a target >= 1 (2 for phi = 1, 2**phi).')
  high = target * (1 + tolerance)
  alphas = lattice(step, high)
  squares = lattice(step, math.sqrt(high))
  grid = [Coefficients(alpha, beta, gamma)
          for alpha in alphas for beta in squares for gamma in squares
          if abs(alpha * beta**2 * gamma**2 / target - 1) <= tolerance + 1e-12]
  if not grid:
    raise errors.ConfigError(
        f'No (alpha, beta, gamma) on the step-{step:g} lattice has '
        f'alpha*beta^2*gamma^2 within {tolerance:g} (relative) of '
        f'{target:g}; raise config.search.tolerance or lower '
        'config.search.step.')
  return grid


def scaled_resolution(base_resolution: int, factor: float,
                      multiple: int) -> int:
  """base * factor rounded to a multiple of `multiple` (the rule uses 4)."""
  return int(round(base_resolution * factor / multiple)) * multiple


def bisect(macs: Callable[[float], int], target: float, low: float) -> float:
  """The coefficient >= low whose macs(coefficient) is closest to `target`.

  `macs` is non-decreasing. Finds the boundary where it first reaches the
  target and returns whichever side of the boundary is closer.

  Raises:
    errors.ConfigError: the target is below macs(low) or out of reach.
  """
  if macs(low) > target:
    raise errors.ConfigError(
        f'MAC target {target:,.0f} is below the base network '
        f'({macs(low):,}); scaling here only grows a network (targets must '
        'be >= 1x the base).')
  high = max(2 * low, low + 1)
  for _ in range(MAX_DOUBLINGS):
    if macs(high) >= target:
      break
    high *= 2
  else:
    raise errors.ConfigError(f'MAC target {target:,.0f} is out of reach '
                             f'(coefficient {high:g} gives {macs(high):,}).')
  below = low
  for _ in range(BISECTION_STEPS):
    middle = (below + high) / 2
    if macs(middle) >= target:
      high = middle
    else:
      below = middle
  return min((below, high), key=lambda c: (abs(macs(c) - target), c))


def shard(items: list, index: int, count: int) -> list:
  """The index-th of `count` interleaved shares (i, i + count, ...).

  Interleaving spreads the larger networks, which come later in a plan,
  over every share.
  """
  if count < 1 or not 0 <= index < count:
    raise errors.ConfigError(f'--shard={index}/{count}: use i/n with n >= 1 '
                             'and 0 <= i < n, e.g. --shard=0/4.')
  return items[index::count]


def parse_shard(text: str) -> tuple[int, int]:
  """'1/4' -> (1, 4)."""
  try:
    index, count = (int(part) for part in text.split('/'))
  except ValueError:
    raise errors.ConfigError(f'--shard={text!r}: use i/n, e.g. --shard=0/4.'
                             ) from None
  shard([], index, count)  # Checks the range.
  return index, count


def tidy(network: Callable[[float], Any], factor: float,
         max_digits: int = 6) -> float:
  """The decimal with the fewest digits whose network equals `network(factor)`.

  Bisection stops a hair past a rounding boundary: depth 1.0000001 already
  gives a one-block stage two blocks, which would print as 'x1'. Candidates
  round `factor` up and down to 1, 2, ... digits; of two that build the
  same network the closer wins. `network` returns anything comparable.
  """
  wanted = network(factor)
  for digits in range(1, max_digits + 1):
    scale = 10**digits
    matches = [candidate for candidate in (math.floor(factor * scale) / scale,
                                           math.ceil(factor * scale) / scale)
               if network(candidate) == wanted]
    if matches:
      return min(matches, key=lambda c: abs(c - factor))
  return factor
