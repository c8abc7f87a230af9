"""The SDXL refiner switch: another checkpoint takes over sampling part-way, from the same latent.

As A1111 (default setting, switch by noise level rather than by step count): at each denoiser call the
progress is (999 − t) / 1000, where t is the training timestep nearest to the current sigma; once it reaches
`switch_at` the refiner is loaded (through the engine's model manager) and used for every later call. The
sampler keeps its own state, so multistep samplers continue smoothly across the switch.
"""
from __future__ import annotations

from typing import Callable

import torch

from .sampling.discrete import DiscreteSchedule


def completed_ratio(sigma: torch.Tensor, schedule: DiscreteSchedule) -> float:
    t = int(torch.argmin((schedule.sigmas - float(sigma.max())).abs()))
    return (len(schedule) - 1 - t) / len(schedule)


class RefinerSwitch:
    """A denoiser that delegates to `denoiser` until `switch_at`, then to the one `load(x)` builds."""

    def __init__(self, denoiser: Callable, schedule: DiscreteSchedule, switch_at: float,
                 load: Callable[[torch.Tensor], Callable]):
        self.denoiser, self.schedule, self.switch_at, self.load = denoiser, schedule, float(switch_at), load
        self.switched = False

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        if not self.switched and completed_ratio(sigma, self.schedule) >= self.switch_at:
            self.denoiser = self.load(x)
            self.switched = True
        return self.denoiser(x, sigma, **kwargs)
