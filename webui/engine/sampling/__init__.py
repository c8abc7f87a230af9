"""Sigma schedules and k-diffusion-style samplers, plus their registries (see docs/architecture.md)."""
from .discrete import DiscreteSchedule, LCMDiscreteSchedule
from .noise import brownian_noise_sampler, make_generators, per_image_noise_sampler
from .registry import (
    SamplerInfo,
    SamplerRegistry,
    ScheduleInfo,
    ScheduleRegistry,
    UnknownSamplerError,
    UnknownScheduleError,
    build_sigmas,
    default_sampler_registry,
    default_schedule_registry,
    initial_noise_scale,
    resolve_sampler_and_schedule,
    run_sampler,
    sampler_kwargs,
)

__all__ = [
    "DiscreteSchedule", "LCMDiscreteSchedule", "SamplerInfo", "SamplerRegistry", "ScheduleInfo",
    "ScheduleRegistry", "UnknownSamplerError", "UnknownScheduleError", "brownian_noise_sampler",
    "build_sigmas", "default_sampler_registry", "default_schedule_registry", "initial_noise_scale",
    "make_generators", "per_image_noise_sampler", "resolve_sampler_and_schedule", "run_sampler",
    "sampler_kwargs",
]
