"""Each training stage's throughput and data-wait fraction on the cluster it runs on (JSON).

    ray job submit --working-dir . -- python jobs/bench_training.py --out /tmp/bench --config tiny [KEY=VALUE ...]

Recipe: base weights -> stage 1 -> stage 2 -> stage 3 (starting from this benchmark's own exports,
so nothing is registered and no `candidate` alias moves) -> per stage, from the per-step metrics
the loop sent to MLflow: median samples/s and mean data-wait fraction over the steps after
`--skip` (start-up, first pipeline pass), the largest per-worker peak memory, plus the fit's wall
time -> `<out>/bench_training.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from mlflow import MlflowClient
from ray import cloudpickle

import detokenizer_adapt
import detokenizer_pretrain
import story_instruct
from seedstory.cli.options import add_config_arguments, config_from_args
from seedstory.config import SeedStoryConfig
from seedstory.data.streams import stage_stream
from seedstory.training.base_weights import write_tiny_base
from seedstory.training.recipe import StageRecipe
from seedstory.training.run import StageRun, start_stage

# The stage jobs beside this file, whose recipes it runs: not installed, so they travel to the workers by value.
RECIPES: tuple[type[StageRecipe], ...] = (detokenizer_pretrain.DetokenizerPretrain, story_instruct.StoryInstruct,
                                          detokenizer_adapt.DetokenizerAdapt)
for job in (detokenizer_pretrain, story_instruct, detokenizer_adapt):
    cloudpickle.register_pickle_by_value(job)


def measure(run: StageRun, skip: int, seconds: float) -> dict:
    client = MlflowClient(run.client.tracking_uri)
    history = {name: {m.step: m.value for m in client.get_metric_history(run.run_id, name)}
               for name in ("samples_per_s", "data_wait_fraction", "loss", "peak_rss_bytes", "peak_gpu_bytes")}
    steps = [step for step in sorted(history["samples_per_s"]) if step > skip]
    if not steps:
        raise ValueError(f"{run.stage}: no step after --skip {skip}; raise max_steps")
    settings = run.settings
    return {
        "steps_measured": len(steps),
        "samples_per_s_median": statistics.median(history["samples_per_s"][s] for s in steps),
        "data_wait_fraction_mean": statistics.fmean(history["data_wait_fraction"][s] for s in steps),
        "fit_seconds": round(seconds, 1),
        "peak_rss_bytes": int(max(history["peak_rss_bytes"].values())),
        **({"peak_gpu_bytes": int(max(history["peak_gpu_bytes"].values()))} if history["peak_gpu_bytes"] else {}),
        "loss_first": history["loss"][min(history["loss"])], "loss_last": history["loss"][max(history["loss"])],
        "global_batch": settings.micro_batch_size * settings.grad_accum_steps * settings.num_workers,
        "workers": settings.num_workers, "zero_stage": settings.zero_stage, "bf16": settings.bf16,
        "mlflow_run_id": run.run_id,
    }


def bench_stage(recipe: type[StageRecipe], config: SeedStoryConfig, skip: int) -> tuple[dict, str]:
    with start_stage(recipe, config) as run:
        tokenizer = run.tokenizer()
        stream, report = stage_stream(run.stage, run.config, tokenizer)
        started = time.perf_counter()
        run.fit(stream, run.validation_set(tokenizer))
        seconds = time.perf_counter() - started
        run.log_data(report)
    if not run.finished:
        raise RuntimeError(f"{run.stage} stopped before max_steps (stop_at_step?): nothing to chain stage 3 from")
    return measure(run, skip, seconds), run.export_uri


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for bench_training.json")
    parser.add_argument("--skip", type=int, default=3, help="leading steps left out of the figures (default: 3)")
    add_config_arguments(parser)
    return parser


def main() -> None:
    args = arguments().parse_args()
    config = config_from_args(args)
    if config.train.base_weights is not None and config.model.preset == "tiny":
        write_tiny_base(config, config.train.base_weights)

    results, exports = {}, {}
    for recipe in RECIPES:
        if recipe is detokenizer_adapt.DetokenizerAdapt:
            config = config.model_copy(deep=True)
            config.train.detokenizer_adapt.sources = {"mllm": exports["story_instruct"],
                                                      "detokenizer": exports["detokenizer_pretrain"]}
        stage = recipe.STAGE
        results[stage], exports[stage] = bench_stage(recipe, config, args.skip)
        print(f"{stage}: {json.dumps(results[stage])}", flush=True)

    report = {
        "device": "cuda" if any(getattr(config.train, r.STAGE).use_gpu for r in RECIPES) else "cpu",
        "torch": torch.__version__, "host_cpus": os.cpu_count(), "platform": platform.platform(),
        "preset": config.model.preset, "stories": config.data.toy.stories, "stages": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_training.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
