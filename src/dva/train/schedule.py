"""Learning-rate schedule: optional linear warm-up, then cosine annealing to zero (paper Sec. 4.1.3).

A pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
