"""The per-worker training loop every stage shares (the function Ray Train runs on each worker).

Step = one optimizer step (``grad_accum_steps`` micro-batches on every worker). Rank 0 logs
progress and sends metrics to the stage's MLflow run; every rank takes part in checkpoints.
Each worker reads its own training stream (``seedstory.data.streams``); a checkpoint records
where every rank's stream goes on, and a resumed run starts each stream there.

Only what the stage trains is inside the DeepSpeed engine (built under ``deepspeed.zero.Init`` for
ZeRO-3, so no worker holds it whole); the frozen networks that feed it run outside, in the compute
dtype and without gradients (``StageRecipe.frozen``).

Validation (``val_every``) runs in eval mode without gradients on the "val" dataset, which is
not split: every worker reads all of it and evaluates every ``world``-th sample, so every rank
runs the same number of forwards (ZeRO-3 gathers parameters collectively). Each evaluation
draws its random numbers (diffusion noise, timesteps) from one fixed seed and restores the
training random state afterwards, so val losses are comparable across evaluations.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import deepspeed
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.async_logging.run_operations import RunOperations
from ray.data import DataIterator
from ray.data.collate_fn import NumpyBatchCollateFn
from torch import nn

from seedstory.config import SeedStoryConfig
from seedstory.data.streams import TrainStream
from seedstory.training import checkpoints
from seedstory.training.deepspeed_engine import compute_dtype, initialize, partitioned_build
from seedstory.training.progress import StepClock
from seedstory.training.recipe import StageRecipe, feed

log = logging.getLogger("seedstory.training")


@dataclass
class LoopSpec:
    """Everything a worker needs (it travels to every worker): the recipe class, plain data, the training stream."""

    recipe: type[StageRecipe]
    config: dict[str, Any]
    export_uri: str
    stream: TrainStream
    sources: dict[str, str] = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    log_every: int = 1

    @property
    def stage(self) -> str:
        return self.recipe.STAGE


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for key, value in batch.items()
    }


def _peak_memory(device: torch.device) -> dict[str, float]:
    """The largest per-worker peak so far: resident memory, and the accelerator's allocations where there is one."""
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0]  # Linux reports KiB
    if device.type == "cuda":
        peaks.append(float(torch.cuda.max_memory_allocated(device)))
    values = torch.tensor(peaks, dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return dict(zip(("peak_rss_bytes", "peak_gpu_bytes"), values.tolist()))


def _mean_across_ranks(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(terms)
    values = torch.stack([terms[name].detach().float().reshape(()) for name in names])
    dist.all_reduce(values)
    values /= dist.get_world_size()
    return dict(zip(names, values.tolist()))


@contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule gets back its own mode (frozen parts stay in eval)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def validate(engine: nn.Module, frozen: nn.Module | None, val: DataIterator, collate: NumpyBatchCollateFn,
             batch_size: int, max_batches: int | None, seed: int, device: torch.device,
             dtype: torch.dtype) -> dict[str, float]:
    """``val/<term>``: each loss term's mean over the val samples (at most ``max_batches`` per worker)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    totals: dict[str, torch.Tensor] = {}
    samples = 0
    with _evaluating(engine), torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for index, batch in enumerate(val.iter_batches(batch_size=batch_size * world, batch_format="numpy")):
            if max_batches is not None and index >= max_batches:
                break
            usable = len(next(iter(batch.values()))) // world * world
            if usable == 0:
                continue
            share = collate({k: v[rank:usable:world] for k, v in batch.items()})
            terms = engine(feed(frozen, _to_device(share, device, dtype)))
            for name, value in terms.items():
                totals[name] = totals.get(name, 0) + value.detach().float().reshape(()) * (usable // world)
            samples += usable // world
    if samples == 0:
        raise RuntimeError(f"the val data holds fewer samples than workers ({world}): nothing to evaluate")
    names = sorted(totals)
    sums = torch.stack([totals[name] for name in names] + [torch.tensor(float(samples), device=device)])
    dist.all_reduce(sums)
    return {f"val/{name}": float(value / sums[-1]) for name, value in zip(names, sums[:-1])}


class RankZeroMetrics:
    """Sends each step's metrics without waiting for MLflow (a synchronous call took about a tenth of
    rank 0's step on the toy stage, and the other ranks wait for rank 0); ``flush`` waits for them all
    and raises what failed, at every checkpoint and at the end."""

    def __init__(self, spec: LoopSpec) -> None:
        self.client = MlflowClient(spec.mlflow_tracking_uri) if spec.mlflow_run_id else None
        self.run_id = spec.mlflow_run_id
        self.pending: list[RunOperations] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        now = int(time.time() * 1000)
        self.pending.append(self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()], synchronous=False))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        failures = []
        for operations in pending:
            try:
                operations.wait()
            except Exception as err:  # the others are still waited for: a step's metrics may land after a failed one
                failures.append(err)
        if failures:
            raise failures[0]


def train_worker(loop_config: dict[str, ray.ObjectRef]) -> None:
    spec: LoopSpec = ray.get(loop_config["spec"])
    config = SeedStoryConfig.model_validate(spec.config)
    stage = getattr(config.train, spec.stage)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.data.seed + rank)

    recipe = spec.recipe(config, spec.sources)
    dtype = compute_dtype(stage)
    frozen = recipe.frozen()
    if frozen is not None:
        frozen.to(device=device, dtype=dtype)
    with partitioned_build(stage, world):
        trained = recipe.build()
    engine = initialize(trained, stage, world)

    state = checkpoints.TrainState()
    if (latest := ray.train.get_checkpoint()) is not None:
        state = checkpoints.restore(engine, latest)
        state.restore_random_state(rank, world, device)
        if rank == 0:
            print(f"resumed from {latest.path} at step {state.step}", flush=True)

    val = ray.train.get_dataset_shard("val") if stage.val_every else None
    collate = recipe.collate()
    metrics_sink = RankZeroMetrics(spec) if rank == 0 else None
    clock = StepClock(total_steps=stage.max_steps, start_step=state.step)
    accumulated: dict[str, list[torch.Tensor]] = {}

    last_step = min(stage.max_steps, stage.stop_at_step or stage.max_steps)
    batches = spec.stream.batches(rank, world, stage.micro_batch_size, collate, state.position(rank, world))
    while state.step < last_step:
        batch, position = next(batches)
        clock.batch_arrived()
        terms = engine(feed(frozen, _to_device(batch, device, dtype)))
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(terms["loss"])
        engine.step()
        for name, value in terms.items():
            accumulated.setdefault(name, []).append(value.detach())
        clock.batch_done(samples=next(iter(batch.values())).shape[0] * world)
        if not boundary:
            continue
        state.step += 1
        losses = _mean_across_ranks({k: torch.stack(v).mean() for k, v in accumulated.items()})
        accumulated.clear()
        metrics = {**losses, "lr": engine.get_lr()[0], **clock.interval(), **_peak_memory(device)}
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if metrics_sink is not None:
            metrics_sink.log(metrics, state.step)
            if state.step % spec.log_every == 0 or state.step == stage.max_steps:
                print(clock.line(state.step, losses["loss"], metrics), flush=True)
        if val is not None and (state.step % stage.val_every == 0 or state.step == stage.max_steps):
            scores = validate(engine, frozen, val, collate, stage.micro_batch_size, stage.val_batches, config.data.seed,
                              device, dtype)
            if metrics_sink is not None:
                metrics_sink.log(scores, state.step)
                print(f"step {state.step}/{stage.max_steps} | val " + " | ".join(
                    f"{name.removeprefix('val/')} {value:.4f}" for name, value in scores.items()), flush=True)
            # a fresh interval: evaluation time is neither waiting for data nor training
            clock = StepClock(total_steps=stage.max_steps, start_step=clock.start_step, started=clock.started)
        if state.step % stage.checkpoint_every == 0 or state.step == last_step:
            state.positions, state.random_states = [None] * world, [None] * world
            dist.all_gather_object(state.positions, position)
            dist.all_gather_object(state.random_states, checkpoints.random_state(device))
            checkpoints.save(engine, state, metrics)
            if metrics_sink is not None:
                metrics_sink.flush()
    batches.close()  # ends this worker's Ray Data execution before the export

    if state.step >= stage.max_steps:
        _export(engine, recipe, spec, stage.zero_stage, rank)


def _export(engine: deepspeed.DeepSpeedEngine, recipe, spec: LoopSpec, zero_stage: int, rank: int) -> None:
    """ZeRO-3 partitions parameters: gather them on every rank, write from rank 0."""
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=zero_stage == 3):
        if rank == 0:
            written = recipe.export(engine.module, spec.export_uri)
            print(f"exported {', '.join(f'{k} -> {v}' for k, v in written.items())}", flush=True)
    dist.barrier()
