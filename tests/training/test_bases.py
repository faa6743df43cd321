"""The tiny bases job end to end through `ray job submit` on the local stack: train, score, write, reload.

A few steps each on a four-story toy world (three train stories, and five text-only ones for the
LLM, which reads one story a step): the point is the mechanics (three Ray Train stages with their
MLflow runs and model versions, the val scores, one complete base folder), not the targets, which
the `toy` preset meets (README).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from seedstory import storage
from seedstory.config import load_config
from seedstory.data.toyworld.generate import write_toy_world
from seedstory.models.detokenizer import build_vae
from seedstory.models.dual_encoder import load_dual_encoder
from seedstory.models.mllm import build_llm
from seedstory.models.vit import build_vit
from seedstory.models.weights import CACHE_ENV, load_tokenizer
from seedstory.training.base_weights import MANIFEST, PARTS, with_base_weights
from seedstory.training.bases import pretrain_bases
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.stack

RAY = str(Path(sys.executable).parent / "ray")
STAGES = ("vae_pretrain", "clip_pretrain", "llm_pretrain")
STEPS = 3
TEXT_STORIES = 5
METRICS = {"vae_pretrain": {"reconstruction_error", "kl", "posterior_std", "val/vae_coherence", "vae/scaling_factor"},
           "clip_pretrain": {"contrastive", "batch_top1", "val/retrieval_top1", "val/retrieval_candidates"},
           "llm_pretrain": {"data/stories", "data/text_stories", "val/llm_loss", "val/llm_next_token_accuracy",
                            "val/llm_caption_validity"}}


def _overrides(bucket: str, tag: str) -> list[str]:
    toy = f"s3://{bucket}/toy-bases-{tag}"
    overrides = [
        f"storage.bucket={bucket}", "tracking.experiment=bases", f"train.base_weights=s3://{bucket}/base-{tag}",
        "data.toy.stories=4", "data.toy.min_frames=4", "data.toy.max_frames=6", f"data.toy.uri={toy}",
        f"data.train_jsonl=[{toy}/train.jsonl]", f"data.val_jsonl=[{toy}/val.jsonl]", f"data.image_root={toy}/images",
        f"data.toy.text_stories={TEXT_STORIES}", f"data.text_jsonl=[{toy}/text.jsonl]", "data.text_max_length=64",
    ]
    for stage in STAGES:
        overrides += [f"train.{stage}.max_steps={STEPS}", f"train.{stage}.checkpoint_every={STEPS}",
                      f"train.{stage}.warmup_steps=1", f"train.{stage}.num_workers=1",
                      f"train.{stage}.micro_batch_size={1 if stage == 'llm_pretrain' else 4}",
                      f"train.{stage}.registered_model=test-{stage}-{tag}"]
    return overrides


@pytest.fixture(scope="module")
def job(ray_head, tmp_path_factory):
    overrides = _overrides(ray_head.bucket, uuid.uuid4().hex[:6])
    config = load_config("tiny", overrides)
    write_toy_world(config.data.toy)
    cache = tmp_path_factory.mktemp("weights-cache")
    runtime_env = {"env_vars": {CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1"}}
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/pretrain_bases.py", "--config", "tiny",
         *overrides],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        yield config, done.stdout


def test_each_base_has_its_run_model_version_and_val_score(job):
    config, log = job
    client = MlflowClient()
    for stage in STAGES:
        version = client.get_model_version_by_alias(getattr(config.train, stage).registered_model, "candidate")
        run = client.get_run(version.run_id)
        assert run.data.tags["seedstory.stage"] == stage and version.source == run.data.tags["seedstory.export_uri"]
        assert run.data.tags["seedstory.base_weights"] == config.train.base_weights
        assert METRICS[stage] <= set(run.data.metrics)
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(1, STEPS + 1))
        if stage == "llm_pretrain":
            assert run.data.metrics["data/text_stories"] == TEXT_STORIES
    assert all(score in log for score in ("val/vae_coherence", "val/retrieval_top1", "val/llm_caption_validity"))
    assert "PASS" in log or "MISS" in log


def test_the_base_folder_is_complete_with_base_json_written_last(job):
    config, _ = job
    base = config.train.base_weights
    fs, root = storage.filesystem_for(base)
    manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
    assert set(manifest["parts"]) == set(PARTS)
    assert {"val/vae_coherence", "val/retrieval_top1"} <= set(manifest["pretrained"]["evaluation"])
    assert set(manifest["pretrained"]["runs"]) == set(STAGES)
    written = {path: info["LastModified"] for path, info in fs.find(root, detail=True).items()}
    assert max(written.values()) == written[f"{root}/{MANIFEST}"]


def test_the_bases_reload_from_the_folder_as_trained(job):
    config, _ = job
    client = MlflowClient()
    exports = {stage: client.get_model_version_by_alias(getattr(config.train, stage).registered_model, "candidate").source
               for stage in STAGES}
    resolved = with_base_weights(config).model
    clip, _ = load_dual_encoder(exports["clip_pretrain"])
    base_clip, _ = load_dual_encoder(config.train.base_weights)
    assert_same(build_vit(resolved), clip.vit)
    assert_same(base_clip.text, clip.text)
    trained_vae = build_vae(resolved.model_copy(update={"vae": resolved.vae.model_copy(
        update={"weights": exports["vae_pretrain"]})}))
    assert_same(build_vae(resolved), trained_vae)
    measured = json.loads(storage.read_bytes(storage.join(config.train.base_weights, MANIFEST)))
    assert build_vae(resolved).config.scaling_factor == measured["pretrained"]["evaluation"]["vae/scaling_factor"]
    tokenizer = load_tokenizer(resolved.llm.tokenizer, resolved.image_tokens)
    trained_llm = build_llm(resolved.model_copy(update={"llm": resolved.llm.model_copy(
        update={"weights": exports["llm_pretrain"]})}), len(tokenizer))
    assert_same(build_llm(resolved, len(tokenizer)), trained_llm)


def test_a_pretrained_folder_is_kept(job):
    config, _ = job
    before = json.loads(storage.read_bytes(storage.join(config.train.base_weights, MANIFEST)))
    assert pretrain_bases(config) == before


def test_a_replacement_stopped_early_leaves_the_base_as_it_was(job, ray_head):
    config, _ = job
    base = config.train.base_weights
    fs, root = storage.filesystem_for(base)
    before = {path: info["LastModified"] for path, info in fs.find(root, detail=True).items()
              if "/staging/" not in path}
    overrides = [*_overrides(ray_head.bucket, "stopped"), f"train.base_weights={base}", "train.vae_pretrain.stop_at_step=1",
                 f"data.toy.uri={config.data.toy.uri}", f"data.train_jsonl={config.data.train_jsonl}",
                 f"data.val_jsonl={config.data.val_jsonl}", f"data.image_root={config.data.image_root}",
                 f"data.text_jsonl={config.data.text_jsonl}"]
    done = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head.ray_dashboard_url, "--working-dir", str(REPO_ROOT), "--",
         "python", "jobs/pretrain_bases.py", "--config", "tiny", "--overwrite", *overrides],
        capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "stopped before max_steps: no base written" in done.stdout
    fs.invalidate_cache()
    after = {path: info["LastModified"] for path, info in fs.find(root, detail=True).items() if "/staging/" not in path}
    assert after == before


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name
