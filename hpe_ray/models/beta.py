"""KL weight (beta) schedules: callables of the global optimisation step returning a float.

Dataclasses rather than closures so that a schedule pickles (Ray ships objects between processes)
and prints its settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

BETA_SCHEDULES = ("constant", "linear", "cyclical")


@dataclass(frozen=True)
class ConstantBeta:
    beta_max: float

    def __call__(self, step: int) -> float:
        return self.beta_max


@dataclass(frozen=True)
class LinearWarmupBeta:
    """0 at step 0, rising linearly to beta_max at warmup_steps, then constant."""

    beta_max: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps == 0:
            return self.beta_max
        return self.beta_max * min(1.0, step / self.warmup_steps)


@dataclass(frozen=True)
class CyclicalBeta:
    """Cyclical annealing (Fu et al., NAACL 2019): total_steps split into n_cycles equal cycles;
    within each, beta rises linearly from 0 over the first `ratio` of the cycle, then stays at
    beta_max. After total_steps it stays at beta_max (the last cycle's end)."""

    beta_max: float
    n_cycles: int
    total_steps: int
    ratio: float = 0.5

    def __call__(self, step: int) -> float:
        if step >= self.total_steps:
            return self.beta_max
        cycle_steps = self.total_steps / self.n_cycles
        phase = (step % cycle_steps) / cycle_steps
        return self.beta_max * min(1.0, phase / self.ratio)


def make_beta_schedule(kind: str, beta_max: float, warmup_steps: int = 0, n_cycles: int = 1,
                       total_steps: int = 0, ratio: float = 0.5) -> Callable[[int], float]:
    """A schedule by name: "constant", "linear" (uses warmup_steps) or "cyclical"
    (uses n_cycles, total_steps, ratio)."""
    if beta_max < 0:
        raise ValueError(f"beta_max must be >= 0, got {beta_max}")
    if kind == "constant":
        return ConstantBeta(beta_max)
    if kind == "linear":
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        return LinearWarmupBeta(beta_max, warmup_steps)
    if kind == "cyclical":
        if n_cycles < 1 or total_steps < n_cycles:
            raise ValueError(f"cyclical beta needs n_cycles >= 1 and total_steps >= n_cycles, "
                             f"got n_cycles={n_cycles}, total_steps={total_steps}")
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"cyclical beta ratio must be in (0, 1], got {ratio}")
        return CyclicalBeta(beta_max, n_cycles, total_steps, ratio)
    raise ValueError(f"unknown beta schedule {kind!r}; expected one of {BETA_SCHEDULES}")
