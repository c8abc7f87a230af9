"""Sampler and schedule registries, name resolution and sigma building (A1111 v1.10.1's rules).

The registries are plain objects: `default_sampler_registry()` / `default_schedule_registry()` build fresh,
populated ones; the app holds them and extensions add to them with `register()`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor

from ..errors import EngineError
from . import samplers_dpm_solver as dpm_solver
from . import samplers_dpmpp as dpmpp
from . import samplers_euler as euler
from . import samplers_extra as extra
from . import samplers_timestep as timestep
from . import schedules
from .discrete import DiscreteSchedule

AUTOMATIC = "automatic"


class UnknownSamplerError(EngineError, ValueError):
    """A sampler name that no registered sampler has; the message lists the valid names."""


class UnknownScheduleError(EngineError, ValueError):
    """A schedule name that no registered schedule has; the message lists the valid names."""


def _frozen(options: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(options or {}))


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler as the UI/API/infotext see it.

    `options` flags (A1111's names): second_order, brownian_noise, discard_next_to_last_sigma, uses_ensd,
    uses_timesteps (DDIM/PLMS/UniPC: own sigmas, Schedule type ignored), timestep_sigmas ("uniform"/"unipc"),
    lcm_schedule; `defaults` are keyword arguments always passed to `func` (e.g. solver_type="heun").
    """
    name: str
    func: Callable[..., Tensor]
    aliases: tuple[str, ...] = ()
    default_scheduler: str = AUTOMATIC
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "options", _frozen(self.options))
        object.__setattr__(self, "defaults", _frozen(self.defaults))


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule type; `func(n, sigma_min, sigma_max, schedule, **opts)`, None for Automatic."""
    name: str
    label: str
    func: Callable[..., Tensor] | None
    aliases: tuple[str, ...] = ()
    needs_model_schedule: bool = False
    default_rho: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "aliases", tuple(self.aliases))


class _Registry:
    _error: type[ValueError] = ValueError
    _kind = "entry"

    def __init__(self, items: Iterable = ()):
        self._items: dict[str, Any] = {}
        for item in items:
            self.register(item)

    def _keys(self, item) -> list[str]:
        return [item.name, *item.aliases]

    def register(self, item, replace: bool = False) -> None:
        """Add an entry; names and aliases are case-insensitive and must not clash unless `replace`."""
        keys = [k.lower() for k in self._keys(item)]
        clash = [k for k in keys if k in self._lookup() and self._lookup()[k].name != item.name]
        if clash and not replace:
            raise ValueError(f"{self._kind} name already registered: {', '.join(clash)}")
        if item.name in self._items and not replace:
            raise ValueError(f"{self._kind} already registered: {item.name}")
        self._items[item.name] = item

    def _lookup(self) -> dict[str, Any]:
        return {key.lower(): item for item in self._items.values() for key in self._keys(item)}

    def find(self, name: str):
        """The entry for a name or alias, or None."""
        return self._lookup().get((name or "").strip().lower())

    def get(self, name: str):
        item = self.find(name)
        if item is None:
            raise self._error(f"Unknown {self._kind} {name!r}. Valid names: {', '.join(self.names())}")
        return item

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self):
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None


class SamplerRegistry(_Registry):
    _error = UnknownSamplerError
    _kind = "sampler"


class ScheduleRegistry(_Registry):
    _error = UnknownScheduleError
    _kind = "schedule type"

    def _keys(self, item: ScheduleInfo) -> list[str]:
        return [item.name, item.label, *item.aliases]

    def labels(self) -> list[str]:
        return [item.label for item in self._items.values()]


def _sampler(name, func, aliases, scheduler=AUTOMATIC, defaults=None, **options) -> SamplerInfo:
    return SamplerInfo(name, func, tuple(aliases), scheduler, options, defaults or {})


def default_sampler_registry() -> SamplerRegistry:
    """A1111 v1.10.1's samplers in UI order (k-diffusion, then timestep samplers, then LCM)."""
    return SamplerRegistry([
        _sampler("DPM++ 2M", dpmpp.sample_dpmpp_2m, ["k_dpmpp_2m"], "karras"),
        _sampler("DPM++ SDE", dpmpp.sample_dpmpp_sde, ["k_dpmpp_sde"], "karras",
                 second_order=True, brownian_noise=True),
        _sampler("DPM++ 2M SDE", dpmpp.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde"], "exponential",
                 brownian_noise=True),
        _sampler("DPM++ 2M SDE Heun", dpmpp.sample_dpmpp_2m_sde, ["k_dpmpp_2m_sde_heun"], "exponential",
                 {"solver_type": "heun"}, brownian_noise=True),
        _sampler("DPM++ 2S a", dpmpp.sample_dpmpp_2s_ancestral, ["k_dpmpp_2s_a"], "karras",
                 uses_ensd=True, second_order=True),
        _sampler("DPM++ 3M SDE", dpmpp.sample_dpmpp_3m_sde, ["k_dpmpp_3m_sde"], "exponential",
                 discard_next_to_last_sigma=True, brownian_noise=True),
        _sampler("Euler a", euler.sample_euler_ancestral, ["k_euler_a", "k_euler_ancestral"], uses_ensd=True),
        _sampler("Euler", euler.sample_euler, ["k_euler"]),
        _sampler("LMS", euler.sample_lms, ["k_lms"]),
        _sampler("Heun", euler.sample_heun, ["k_heun"], second_order=True),
        _sampler("DPM2", euler.sample_dpm_2, ["k_dpm_2"], "karras",
                 discard_next_to_last_sigma=True, second_order=True),
        _sampler("DPM2 a", euler.sample_dpm_2_ancestral, ["k_dpm_2_a"], "karras",
                 discard_next_to_last_sigma=True, uses_ensd=True, second_order=True),
        _sampler("DPM fast", dpm_solver.sample_dpm_fast, ["k_dpm_fast"], uses_ensd=True),
        _sampler("DPM adaptive", dpm_solver.sample_dpm_adaptive, ["k_dpm_ad"], uses_ensd=True),
        _sampler("Restart", extra.sample_restart, ["restart"], "karras", second_order=True),
        _sampler("DDIM", timestep.sample_ddim, ["ddim"], uses_timesteps=True, timestep_sigmas="uniform"),
        _sampler("PLMS", timestep.sample_plms, ["plms"], uses_timesteps=True, timestep_sigmas="uniform"),
        _sampler("UniPC", timestep.sample_unipc, ["unipc"], uses_timesteps=True, timestep_sigmas="unipc"),
        _sampler("LCM", extra.sample_lcm, ["k_lcm"], lcm_schedule=True),
    ])


def default_schedule_registry() -> ScheduleRegistry:
    """A1111 v1.10.1's schedule types, Automatic first."""
    return ScheduleRegistry([
        ScheduleInfo(AUTOMATIC, "Automatic", None),
        ScheduleInfo("uniform", "Uniform", schedules.uniform, needs_model_schedule=True),
        ScheduleInfo("karras", "Karras", schedules.karras, default_rho=7.0),
        ScheduleInfo("exponential", "Exponential", schedules.exponential),
        ScheduleInfo("polyexponential", "Polyexponential", schedules.polyexponential, default_rho=1.0),
        ScheduleInfo("sgm_uniform", "SGM Uniform", schedules.sgm_uniform, ("SGMUniform",), True),
        ScheduleInfo("kl_optimal", "KL Optimal", schedules.kl_optimal),
        ScheduleInfo("align_your_steps", "Align Your Steps", schedules.align_your_steps),
        ScheduleInfo("simple", "Simple", schedules.simple, needs_model_schedule=True),
        ScheduleInfo("normal", "Normal", schedules.normal, needs_model_schedule=True),
        ScheduleInfo("ddim", "DDIM", schedules.ddim, needs_model_schedule=True),
        ScheduleInfo("beta", "Beta", schedules.beta, needs_model_schedule=True),
    ])


def _split_combined_name(schedule_reg: ScheduleRegistry, name: str) -> tuple[str, ScheduleInfo | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", Karras): strip a trailing schedule label, name or alias."""
    lowered = name.lower()
    for info in schedule_reg:
        for option in (info.label, info.name, *info.aliases):
            if lowered.endswith(" " + option.lower()):
                return name[: -(len(option) + 1)], info
    return name, None


def resolve_sampler_and_schedule(sampler_reg: SamplerRegistry, schedule_reg: ScheduleRegistry,
                                 sampler_name: str, schedule_name: str | None = None
                                 ) -> tuple[SamplerInfo, ScheduleInfo]:
    """The sampler and the concrete schedule to use. Accepts old "X Karras" names; a suffix in the sampler
    name wins over `schedule_name`. "Automatic" (or empty) becomes the sampler's default schedule, and Uniform
    when that default is automatic. Unknown names raise with the list of valid ones."""
    sampler = sampler_reg.find(sampler_name)
    schedule = None
    if sampler is None:
        base, schedule = _split_combined_name(schedule_reg, sampler_name)
        sampler = sampler_reg.get(base)
    if schedule is None:
        schedule = schedule_reg.get(schedule_name) if schedule_name else schedule_reg.get(AUTOMATIC)
    if schedule.name == AUTOMATIC:
        default = sampler.default_scheduler
        schedule = schedule_reg.get("uniform" if default == AUTOMATIC else default)
    return sampler, schedule


def model_schedule(sampler: SamplerInfo, schedule: DiscreteSchedule) -> DiscreteSchedule:
    """The table a sampler runs on: the model's, or LCM's coarse 50-step view (its denoiser needs it too)."""
    return schedule.lcm_view() if sampler.options.get("lcm_schedule") else schedule


def build_sigmas(sampler: SamplerInfo, schedule_info: ScheduleInfo, steps: int, schedule: DiscreteSchedule,
                 device: torch.device | str = "cpu", sigma_min: float | None = None,
                 sigma_max: float | None = None, always_discard_next_to_last_sigma: bool = False,
                 **schedule_opts) -> Tensor:
    """The sigmas for `steps` steps, as A1111's `KDiffusionSampler.get_sigmas` / `get_timesteps` make them.

    Timestep samplers use their own uniform-timestep sigmas and ignore `schedule_info`; an unresolved
    Automatic stands for the sampler's default schedule (see `resolve_sampler_and_schedule`). Otherwise the schedule
    gets the model's sigma range (or the sigma_min/sigma_max overrides) and, for discard_next_to_last_sigma
    samplers, one step more with the penultimate sigma dropped afterwards. `schedule_opts` go to the schedule
    function (rho, is_sdxl, dist_alpha, dist_beta).
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    discard = bool(sampler.options.get("discard_next_to_last_sigma")) or always_discard_next_to_last_sigma
    kind = sampler.options.get("timestep_sigmas")
    if kind == "unipc":
        return timestep.unipc_sigmas(schedule, steps, discard).to(device)
    if kind is not None:
        return timestep.timestep_sigmas(schedule, steps, discard).to(device)
    if schedule_info.name == AUTOMATIC and sampler.default_scheduler != AUTOMATIC:
        schedule_info = default_schedule_registry().get(sampler.default_scheduler)
    model = model_schedule(sampler, schedule)
    n = steps + 1 if discard else steps
    if schedule_info.func is None:
        sigmas = model.get_sigmas(n)
    else:
        lo = model.sigma_min if not sigma_min else sigma_min
        hi = model.sigma_max if not sigma_max else sigma_max
        sigmas = schedule_info.func(n, lo, hi, model, **schedule_opts)
    if discard:
        sigmas = schedules.discard_next_to_last_sigma(sigmas)
    return sigmas.to(device)


def initial_noise_scale(sampler: SamplerInfo, sigmas: Tensor, sgm_noise_multiplier: bool = False) -> Tensor:
    """What txt2img multiplies unit noise by: sigmas[0], or sqrt(1 + sigmas[0]^2) for timestep samplers
    (A1111 feeds them unit noise as a VP latent) and with A1111's "SGM noise multiplier" setting."""
    if sampler.options.get("uses_timesteps") or sgm_noise_multiplier:
        return (1 + sigmas[0] ** 2) ** 0.5
    return sigmas[0]


def sampler_kwargs(sampler: SamplerInfo, options: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler's fixed defaults plus those of `options` its function accepts (A1111 passes eta, s_churn,
    s_noise, ... only to samplers that take them), so one options dict can serve every sampler."""
    params = inspect.signature(sampler.func).parameters
    accepted = {k: v for k, v in options.items() if k in params and v is not None}
    return {**sampler.defaults, **accepted}


def run_sampler(sampler: SamplerInfo, model, x: Tensor, sigmas: Tensor, extra_args: dict | None = None,
                callback=None, noise_sampler=None, **options) -> Tensor:
    """Call `sampler.func` with the options it accepts."""
    return sampler.func(model, x, sigmas, extra_args=extra_args, callback=callback,
                        noise_sampler=noise_sampler, **sampler_kwargs(sampler, options))
