"""The three stage jobs end to end through `ray job submit` on the local stack (tiny preset, 2 workers).

One chain per module: base weights and toy world written once, then stage 1 -> stage 2 -> stage 3,
stage 3 starting from the other two by MLflow alias. Stage 1 is stopped mid-run and resubmitted under
its run name, as after a preemption, and the chain goes on from the resumed run. Each job must
register its model version and log its val losses; the exports must hold exactly the weights of the
run's final DeepSpeed checkpoint, load with diffusers/peft/transformers, and beat the model the stage
started from on the toy data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from diffusers import UNet2DConditionModel
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from peft import PeftModel
from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from seedstory import storage
from seedstory.config import load_config
from seedstory.data.images import decode_image, encode_image
from seedstory.data.samples import WindowSampler, stage1_samples
from seedstory.data.toyworld.generate import split_of, toy_story, write_toy_world
from seedstory.data.toyworld.render import render_frame
from seedstory.data.stage_collate import FrameCollate, WindowCollate, target_images
from seedstory.models.detokenizer import Detokenizer, build_detokenizer
from seedstory.models.export import load_detokenizer, load_mllm
from seedstory.models.vit import build_vit
from seedstory.models.weights import CACHE_ENV, local_copy
from seedstory.training.base_weights import with_base_weights, write_tiny_base
from seedstory.tokenizer import image_token_ids
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack

RAY = str(Path(sys.executable).parent / "ray")
STAGES = ("detokenizer_pretrain", "story_instruct", "detokenizer_adapt")
RESUMED = "detokenizer_pretrain"
# Ray Train lists a checkpoint some steps after its folder lands: the resumed stage checkpoints often and has
# steps enough that the stop comes mid-run.
STEPS = {"detokenizer_pretrain": 16, "story_instruct": 8, "detokenizer_adapt": 8}
CHECKPOINT_EVERY = {**STEPS, RESUMED: 2}
VAL_TERMS = {"detokenizer_pretrain": {"val/loss", "val/diffusion_mse"},
             "story_instruct": {"val/loss", "val/text_ce", "val/image_cosine"},
             "detokenizer_adapt": {"val/loss", "val/diffusion_mse"}}


@dataclass
class StageJob:
    submission_id: str
    log: str
    version: ModelVersion
    run: Run
    checkpoint: Path
    resumed_at: int = 0
    stopped_status: str | None = None


def _overrides(bucket: str, tag: str) -> list[str]:
    toy = f"s3://{bucket}/toy-{tag}"
    names = {stage: f"test-{stage}-{tag}" for stage in STAGES}
    overrides = [
        f"storage.bucket={bucket}", "tracking.experiment=stage-jobs", f"train.base_weights=s3://{bucket}/base-{tag}",
        f"train.run_name=chain-{tag}",
        "data.toy.stories=10", "data.toy.val_fraction=0.2", "data.toy.test_fraction=0.0", f"data.toy.uri={toy}",
        f"data.train_jsonl=[{toy}/train.jsonl]", f"data.val_jsonl=[{toy}/val.jsonl]", f"data.image_root={toy}/images",
        f"train.detokenizer_adapt.sources.mllm=models:/{names['story_instruct']}@candidate",
        f"train.detokenizer_adapt.sources.detokenizer=models:/{names['detokenizer_pretrain']}@candidate",
    ]
    for stage in STAGES:
        # Validation once, at the end: the interval itself is tested in test_loop.
        overrides += [f"train.{stage}.max_steps={STEPS[stage]}",
                      f"train.{stage}.checkpoint_every={CHECKPOINT_EVERY[stage]}", f"train.{stage}.warmup_steps=2", f"train.{stage}.registered_model={names[stage]}",
                      f"train.{stage}.val_every={STEPS[stage]}"]
    return overrides


def _submit(ray_head, stage: str, overrides: list[str], cache: Path, wait: bool = True) -> tuple[str, str]:
    """``ray job submit``; with ``wait``, until the job ends (the log is its output)."""
    submission_id = f"{stage}-{uuid.uuid4().hex[:6]}"
    runtime_env = {"env_vars": {CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1"}}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--submission-id", submission_id,
         *([] if wait else ["--no-wait"]), "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", f"jobs/{stage}.py", "--config", "tiny",
         *overrides],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return submission_id, done.stdout


@pytest.fixture(scope="module")
def world(ray_head, tmp_path_factory) -> tuple[list[str], Path]:
    """The overrides of this module's jobs, with their toy world and base weights written, and a weights cache."""
    overrides = _overrides(ray_head.bucket, uuid.uuid4().hex[:6])
    config = load_config("tiny", overrides)
    write_toy_world(config.data.toy)
    write_tiny_base(config, config.train.base_weights)
    return overrides, tmp_path_factory.mktemp("weights-cache")


def _submit_and_stop_mid_run(ray_head, stage: str, overrides: list[str], cache: Path, config) -> str:
    """Submits ``stage`` and stops it once its step-4 checkpoint is listed; ``ray job status`` of it."""
    # Ray Train resumes from the checkpoints its snapshot lists, written after the folder is uploaded:
    # stop the job only once step 4 is listed there, not when its folder appears.
    snapshot = storage.join(config.storage.uri("runs"), f"{config.train.run_name}-{stage}",
                            CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)
    fs, path = storage.filesystem_for(snapshot)
    submission_id, _ = _submit(ray_head, stage, overrides, cache, wait=False)
    deadline = time.monotonic() + 300
    while not (fs.exists(path) and "step-00000004" in fs.cat_file(path).decode()):
        assert time.monotonic() < deadline, f"step 4 never listed in {snapshot}"
        time.sleep(1)
        fs.invalidate_cache()
    stopped = subprocess.run([RAY, "job", "stop", "--address", ray_head.ray_dashboard_url, submission_id],
                             capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = subprocess.run([RAY, "job", "status", "--address", ray_head.ray_dashboard_url, submission_id],
                            capture_output=True, text=True, timeout=60)
    return status.stdout + status.stderr


@pytest.fixture(scope="module")
def chain(ray_head, world, tmp_path_factory):
    overrides, cache = world
    config = load_config("tiny", overrides)
    client = MlflowClient()
    jobs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))  # this process loads the exports too: keep them out of ~/.cache
        for stage in STAGES:
            stopped_status = _submit_and_stop_mid_run(ray_head, stage, overrides, cache, config) \
                if stage == RESUMED else None
            submission_id, log = _submit(ray_head, stage, overrides, cache)
            resumed_at = int(log.split("resumed from ")[1].split(" at step ")[1].split()[0]) if stopped_status else 0
            name = getattr(config.train, stage).registered_model
            version = client.get_model_version_by_alias(name, "candidate")
            run = client.get_run(version.run_id)
            checkpoint = tmp_path_factory.mktemp(f"checkpoint-{stage}")
            fs, path = storage.filesystem_for(run.data.tags["seedstory.checkpoint_uri"])
            fs.get(path, str(checkpoint), recursive=True)
            jobs[stage] = StageJob(submission_id, log, version, run, checkpoint / Path(path).name, resumed_at,
                                   stopped_status)
        yield with_base_weights(config), jobs


def trained_tensors(job: StageJob) -> dict[str, torch.Tensor]:
    """The final checkpoint's fp32 master weights as the bf16 values the workers trained with."""
    state = get_fp32_state_dict_from_zero_checkpoint(str(job.checkpoint), tag="deepspeed")
    return {name: tensor.bfloat16() for name, tensor in state.items()}


def assert_equal_tensors(exported: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], prefix: str) -> None:
    """Every exported parameter equals the trained one; buffers (kept float32 under bf16) are not trained."""
    parameters = {name: tensor for name, tensor in exported.items() if tensor.dtype == torch.bfloat16}
    assert parameters, "no bf16-trained parameter in the export"
    for name, tensor in parameters.items():
        assert torch.equal(tensor, trained[prefix + name]), name


def train_frames(config) -> tuple[list[str], list[Image.Image]]:
    index = next(i for i in range(config.data.toy.stories) if split_of(config.data.toy, i) == "train")
    story = toy_story(config.data.toy, index)
    images = [decode_image(encode_image(render_frame(state, config.data.toy.image_size), ".jpg"))
              for state in story.states]
    return list(story.record.captions), images


def noise_mse(detokenizer: Detokenizer, pixels: torch.Tensor, features: torch.Tensor, time_ids: torch.Tensor) -> float:
    """The diffusion loss with noise and timesteps fixed, averaged over a few draws."""
    with torch.no_grad():
        return float(np.mean([detokenizer.loss(pixels, features, time_ids, torch.Generator().manual_seed(seed))
                              for seed in range(4)]))


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_job_registers_its_export_with_its_run(chain, stage):
    config, jobs = chain
    job, steps = jobs[stage], STEPS[stage]
    assert "model version:" in job.log and f"step {steps}/{steps}" in job.log
    tags, params = job.run.data.tags, job.run.data.params
    assert tags["seedstory.stage"] == stage and tags["ray.job_id"] == job.submission_id
    assert params[f"train.{stage}.max_steps"] == str(steps) and params["model.vit.weights"] == config.model.vit.weights
    assert tags["lineage.base_weights.uri"] == params["lineage.base_weights.uri"] == config.train.base_weights
    assert job.version.source == tags["seedstory.export_uri"] and job.version.run_id == job.run.info.run_id
    assert tags["seedstory.checkpoint_uri"].endswith(f"step-{steps:08d}")
    history = MlflowClient().get_metric_history(job.run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(job.resumed_at + 1, steps + 1))
    assert {"lr", "grad_norm", "samples_per_s", "data_wait_fraction", "data/stories"} <= set(job.run.data.metrics)
    assert job.run.data.metrics["data/stories"] == 8 and job.run.data.metrics["val_data/stories"] == 2
    assert VAL_TERMS[stage] <= set(job.run.data.metrics)
    for term in VAL_TERMS[stage]:
        history = MlflowClient().get_metric_history(job.run.info.run_id, term)
        assert sorted(m.step for m in history) == [steps], term


def test_stage3_records_the_model_versions_it_started_from(chain):
    _, jobs = chain
    tags, params = jobs["detokenizer_adapt"].run.data.tags, jobs["detokenizer_adapt"].run.data.params
    for name, stage in (("mllm", "story_instruct"), ("detokenizer", "detokenizer_pretrain")):
        version = jobs[stage].version
        assert tags[f"lineage.{name}.model_version"] == f"{version.name}/{version.version}"
        assert tags[f"lineage.{name}.run_id"] == jobs[stage].run.info.run_id
        assert params[f"lineage.{name}.uri"] == version.source
        assert jobs["detokenizer_adapt"].version.tags[f"lineage.{name}.run_id"] == jobs[stage].run.info.run_id


def assert_detokenizer_export_is_trained(job: StageJob) -> Path:
    """The exported UNet and condition adapter hold exactly the final checkpoint's weights."""
    folder = local_copy(job.version.source)
    trained = trained_tensors(job)
    assert_equal_tensors(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"), trained, "detokenizer.unet.")
    assert_equal_tensors(load_file(folder / "condition_adapter.safetensors"), trained, "detokenizer.adapter.")
    return folder


def test_stage1_export_is_the_trained_unet_and_beats_its_starting_point(chain):
    config, jobs = chain
    job = jobs["detokenizer_pretrain"]
    folder = assert_detokenizer_export_is_trained(job)
    assert isinstance(UNet2DConditionModel.from_pretrained(folder / "unet"), UNet2DConditionModel)

    rows = list(stage1_samples(train_frames(config)[1][:8], config.model.vit.image_size, config.model.sd_image_size))
    batch = FrameCollate()({name: np.stack([row[name] for row in rows]) for name in rows[0]})
    features = build_vit(config.model)(batch["vit_pixels"]).detach()
    torch.manual_seed(0)
    start = build_detokenizer(config.model)
    after = load_detokenizer(job.version.source)
    assert noise_mse(after, batch["sd_pixels"], features, batch["add_time_ids"]) < \
        noise_mse(start, batch["sd_pixels"], features, batch["add_time_ids"])


def test_stage2_export_is_the_trained_adapter_and_its_loss_fell(chain):
    config, jobs = chain
    job = jobs["story_instruct"]
    folder = local_copy(job.version.source)
    trained = trained_tensors(job)
    assert_equal_tensors(load_file(folder / "input_resampler.safetensors"), trained, "mllm.input_resampler.")
    assert_equal_tensors(load_file(folder / "output_resampler.safetensors"), trained, "mllm.output_resampler.")
    lora = {name.replace(".weight", ".default.weight"): tensor
            for name, tensor in load_file(folder / "adapter" / "adapter_model.safetensors").items() if ".lora_" in name}
    assert_equal_tensors(lora, trained, "mllm.llm.")
    base = LlamaForCausalLM.from_pretrained(local_copy(config.model.llm.weights))
    assert isinstance(PeftModel.from_pretrained(base, folder / "adapter"), PeftModel)

    losses = {m.step: m.value for m in MlflowClient().get_metric_history(job.run.info.run_id, "loss")}
    last = STEPS["story_instruct"]
    assert np.mean([losses[s] for s in (last - 1, last)]) < np.mean([losses[1], losses[2]]), losses


def test_stage3_export_is_the_trained_unet_and_beats_the_stage1_detokenizer(chain):
    config, jobs = chain
    job = jobs["detokenizer_adapt"]
    assert_detokenizer_export_is_trained(job)

    mllm, tokenizer = load_mllm(jobs["story_instruct"].version.source)
    captions, images = train_frames(config)
    sampler = WindowSampler(tokenizer, config.model.image_tokens, config.model.vit.image_size,
                            config.data.window_frames, 1, config.data.max_length, 0, config.model.sd_image_size)
    samples = list(sampler.samples("eval", captions, images))
    collate = WindowCollate(image_token_ids(tokenizer, config.model.image_tokens).pad)
    batch = collate({name: [s[name] for s in samples] for name in samples[0]})
    with torch.no_grad():
        features = build_vit(config.model)(batch["vit_pixels"])
        regressed = mllm(input_ids=batch["input_ids"], image_features=features,
                         is_target=target_images(batch["num_images"])).regressed
    start = load_detokenizer(jobs["detokenizer_pretrain"].version.source)
    after = load_detokenizer(job.version.source)
    assert noise_mse(after, batch["sd_pixels"], regressed, batch["add_time_ids"]) < \
        noise_mse(start, batch["sd_pixels"], regressed, batch["add_time_ids"])


def test_a_stage_job_stopped_mid_run_and_resubmitted_with_its_run_name_resumes(chain):
    _, jobs = chain
    job = jobs[RESUMED]
    assert "was stopped" in job.stopped_status
    assert 4 <= job.resumed_at < STEPS[RESUMED], job.resumed_at
    history = MlflowClient().get_metric_history(job.run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(job.resumed_at + 1, STEPS[RESUMED] + 1)), \
        "only the steps left are trained"
