"""Per-job overhead (issue #10): each prompt is encoded once per job whatever the batch size, batch count
and step count, and nothing in a step — loop, denoiser, sampler control flow, noise — reads a value back
from the device, so on a GPU the host never waits for it between steps.

On CPU a host read costs nothing, so the tests count the Tensor methods that would be one on a GPU
(`__bool__` of a comparison, `.item()`, `.cpu()`, `.tolist()`, `float()`, ...) and require the count per
job to be the same at 2 steps as at 6: a fixed number of reads per job, none per step.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from conftest import small_params
from webui.engine.sampling import (brownian_noise_sampler, build_sigmas, default_sampler_registry,
                                   default_schedule_registry, make_generators, per_image_noise_sampler,
                                   resolve_sampler_and_schedule, run_sampler)
from webui.engine.sampling.discrete import DiscreteSchedule
from webui.services.job_queue import InProcessQueue

SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
# DPM adaptive picks its next step size from an error estimate of the current one: a read per step by design.
DATA_DEPENDENT = {"DPM adaptive"}


@pytest.fixture(scope="module")
def engine(checkpoints):
    return checkpoints.engine("sd1")


def _count_encoder_calls(engine, params) -> int:
    calls = []
    handles = [e.model.register_forward_hook(lambda *a: calls.append(1))
               for e in engine.models.current.prompt_encoder.encoders]
    try:
        engine.txt2img(params)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


def test_each_prompt_is_encoded_once_per_job(engine):
    one = _count_encoder_calls(engine, small_params(steps=2))
    assert one == 2                      # the prompt and the (empty) negative prompt
    assert _count_encoder_calls(engine, small_params(steps=5, batch_size=2, n_iter=2)) == one
    # same text on both sides: encoded once; "" is always encoded (the padding chunk for "Pad conds")
    assert _count_encoder_calls(engine, small_params(steps=4, negative_prompt="a red circle")) == 2
    assert _count_encoder_calls(engine, small_params(steps=4, negative_prompt="blurry")) == 3


class _SyncCounter:
    """Counts host-read Tensor methods by the file that called them (a spy; the methods still run)."""

    def __init__(self, monkeypatch):
        self.by_file: collections.Counter = collections.Counter()
        for name in SYNCS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(real))

    def _wrap(self, real):
        counter = self.by_file

        def method(tensor, *args, **kwargs):
            caller = Path(sys._getframe(1).f_code.co_filename).name
            counter[caller] += 1
            return real(tensor, *args, **kwargs)

        return method

    @property
    def total(self) -> int:
        return sum(self.by_file.values())


def _count_syncs(monkeypatch, run) -> collections.Counter:
    counter = _SyncCounter(monkeypatch)
    try:
        run()
    finally:
        monkeypatch.undo()
    return counter.by_file


def _run_through_queue(engine, params) -> None:
    """As the UI and API do: the queue's progress callback keeps the latest x0 for previews."""
    queue = InProcessQueue()
    latest = []
    job = queue.submit("txt2img", lambda control, progress: engine.txt2img(
        params, control, lambda info: (progress(info), latest.append(info.denoised))))
    assert job.done_event.wait(120) and job.error is None, job.error
    assert latest
    queue.shutdown()


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE", "Heun", "UniPC", "DDIM"])
def test_no_host_sync_per_step_in_a_job(engine, monkeypatch, sampler):
    """Everything a job runs — queue, loop, denoiser, t lookup, sampler branches, noise — counted together."""
    counts = {steps: _count_syncs(monkeypatch, lambda: _run_through_queue(
        engine, small_params(steps=steps, sampler_name=sampler))) for steps in (2, 6)}
    assert counts[2] == counts[6], counts     # the same reads whatever the step count: none per step


def _toy_denoiser(x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.tanh(x / (1 + s ** 2) ** 0.5) * 0.8


def _run_sampler(name: str, steps: int) -> torch.Tensor:
    registry, schedules = default_sampler_registry(), default_schedule_registry()
    sampler, schedule = resolve_sampler_and_schedule(registry, schedules, name)
    sigmas = build_sigmas(sampler, schedule, steps, DiscreteSchedule.for_sd())
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    if sampler.options.get("brownian_noise"):
        noise = brownian_noise_sampler(x, sigmas, [1, 2])
    else:
        noise = per_image_noise_sampler(make_generators([1, 2]), x.shape, x.device, x.dtype)
    options = {"s_churn": 0.5} if name in ("Euler", "Heun", "DPM2") else {}   # churn draws noise every step
    return run_sampler(sampler, _toy_denoiser, x, sigmas, extra_args={}, noise_sampler=noise, **options)


@pytest.mark.parametrize("name", [n for n in default_sampler_registry().names() if n not in DATA_DEPENDENT])
def test_every_sampler_branches_on_host_floats(monkeypatch, name):
    """The sampler alone (schedule, noise, branches): a fixed number of reads per run, none per step."""
    # both >= 20 steps, where Restart plans one restart segment (its plan is read once per run)
    few = _count_syncs(monkeypatch, lambda: _run_sampler(name, 20))
    many = _count_syncs(monkeypatch, lambda: _run_sampler(name, 30))
    assert few == many, (few, many)


def test_sigma_to_t_stays_on_the_tensors_device(monkeypatch):
    schedule = DiscreteSchedule.for_sd()
    sigma = torch.tensor([14.6, 1.0, 0.03])
    counts = _count_syncs(monkeypatch, lambda: schedule.sigma_to_t(sigma))
    assert not counts
    assert torch.allclose(schedule.t_to_sigma(schedule.sigma_to_t(sigma)), sigma, rtol=1e-4)


def test_plain_cfg_makes_no_index_copies(engine, monkeypatch):
    """One row per image: the denoiser feeds x itself to the batch, with no index tensor or gather."""
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **kw: made.append(Path(sys._getframe(1).f_code.co_filename).name)
                        or real(*a, **kw))
    engine.txt2img(small_params(steps=3, batch_size=2))
    assert "denoiser.py" not in made


def test_sync_counter_is_not_blind(engine, monkeypatch):
    """A denoiser hook that compares sigma on the host (as the samplers used to) shows up once per step."""
    engine.hooks.before.append(lambda state: bool((state["sigma"] > 0).all()))
    try:
        totals = [sum(_count_syncs(monkeypatch, lambda: engine.txt2img(small_params(steps=steps))).values())
                  for steps in (2, 6)]
    finally:
        engine.hooks.before.pop()
    assert totals[1] - totals[0] >= 4


def test_preview_map_is_fitted_on_the_worker_not_by_a_preview_call(engine, monkeypatch, tmp_path):
    """The latent→RGB fit runs a VAE encode; under medvram that moves the VAE onto the GPU, so it must run on
    the generation worker (job start), never on the thread that polls previews in the middle of a step."""
    import threading
    import time

    import webui.app as app_module
    from webui.services.settings import Settings
    from webui.services.storage import OutputStorage

    fits = []
    real_fit = app_module.fit_latent_to_rgb
    monkeypatch.setattr(app_module, "fit_latent_to_rgb",
                        lambda vae: fits.append(threading.current_thread().name) or real_fit(vae))
    queue = InProcessQueue()
    app = app_module.App(engine=engine, settings=Settings.load(tmp_path / "config.json"),
                         storage=OutputStorage(tmp_path / "outputs"), queue=queue)
    try:
        job = app.submit("txt2img", small_params(steps=40), save=False)
        deadline = time.time() + 120
        while job.latest is None and not job.done_event.is_set() and time.time() < deadline:
            time.sleep(0.01)
        image = app.preview(job)
        job.control.interrupted = True
        assert job.wait(120) and job.error is None, job.error
    finally:
        queue.shutdown()
    assert image is not None and image.size[0] >= 8
    assert fits == ["generation-worker"]     # once per VAE, on the worker; the preview call fitted nothing
