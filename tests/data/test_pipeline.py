"""Ray Data pipelines over the local stack: S3 -> stories -> stage samples -> 2 Ray Train workers."""

import json

import pytest
import ray
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from seedstory.config import load_config
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.pipeline import WindowCollate, stage_dataset
from seedstory.data.toyworld.generate import toy_story, write_toy_world
from seedstory.storage import write_bytes
from seedstory.tokenizer import build_tiny_tokenizer, image_token_ids

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def toy(s3):
    uri = f"s3://{s3.bucket}/toy-pipeline"
    config = load_config("tiny", [
        "data.toy.stories=10", "data.toy.min_frames=6", "data.toy.max_frames=14", "data.toy.val_fraction=0.0",
        "data.toy.test_fraction=0.0", f"data.train_jsonl=[{uri}/train.jsonl]", f"data.image_root={uri}/images",
        "data.failure_budget=0.0", "data.preprocess_batch_size=2",
    ])
    summary = write_toy_world(config.data.toy, uri)
    captions = [c for i in range(10) for c in toy_story(config.data.toy, i).record.captions]
    tokenizer = build_tiny_tokenizer([*captions, "[INST]"], config.model.llm.vocab_size, config.model.image_tokens)
    return config, summary, tokenizer


def _consume(train_config: dict) -> None:
    shard = ray.train.get_dataset_shard("train")
    seen = []
    for batch in shard.iter_torch_batches(batch_size=2, collate_fn=train_config["collate"]):
        assert batch["input_ids"].shape == batch["labels"].shape == batch["image_mask"].shape
        assert batch["vit_pixels"].shape[0] == int(batch["num_images"].sum())
        assert int(batch["image_mask"].sum()) == int(batch["num_images"].sum()) * train_config["image_tokens"]
        assert bool((batch["labels"] != IGNORE_INDEX).any(dim=1).all())
        seen.append(int(batch["input_ids"].shape[0]))
    rank = ray.train.get_context().get_world_rank()
    with open(f"{train_config['out']}/rank{rank}.json", "w") as f:
        json.dump(seen, f)


def test_two_train_workers_consume_stage2_windows_streamed_from_s3(toy, ray_cluster, tmp_path):
    config, summary, tokenizer = toy
    dataset, report = stage_dataset("story_instruct", config, "train", tokenizer=tokenizer, epochs=2)
    trainer = TorchTrainer(
        _consume,
        train_loop_config={"collate": WindowCollate(image_token_ids(tokenizer, 16).pad), "out": str(tmp_path),
                           "image_tokens": config.model.image_tokens},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="data-pipeline-test", storage_path=str(tmp_path / "runs")),
        datasets={"train": dataset},
    )
    trainer.fit()
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    expected = sum(len(range(0, len(toy_story(config.data.toy, i).record.images), 10)) for i in range(10)) * 2
    assert all(per_rank) and sum(map(sum, per_rank)) == expected
    metrics = report.metrics()
    assert metrics["data/stories"] == 10 and metrics["data/bad_total"] == 0 and metrics["data/windows_too_long"] == 0


def test_stage1_and_stage3_samples_have_model_shapes(toy, ray_cluster):
    config, summary, tokenizer = toy
    frames, _ = stage_dataset("detokenizer_pretrain", config, "train")
    rows = frames.take_all()
    assert len(rows) == summary["frames"]
    assert rows[0]["vit_pixels"].shape == (3, 56, 56) and rows[0]["sd_pixels"].shape == (3, 64, 64)
    assert rows[0]["add_time_ids"].tolist() == [64, 64, 0, 0, 64, 64]
    windows, _ = stage_dataset("detokenizer_adapt", config, "train", tokenizer=tokenizer)
    batch = next(iter(windows.iter_torch_batches(batch_size=3, collate_fn=WindowCollate(0))))
    assert batch["sd_pixels"].shape == (3, 3, 64, 64) and batch["add_time_ids"].shape == (3, 6)
    assert batch["vit_pixels"].dtype == torch.float32


def test_bad_records_past_the_budget_stop_the_pipeline_naming_them(toy, ray_cluster, s3):
    config, summary, tokenizer = toy
    uri = f"s3://{s3.bucket}/toy-pipeline-bad/train.jsonl"
    lines = [json.dumps(toy_story(config.data.toy, i).record.to_json()) for i in range(3)]
    write_bytes(uri, "\n".join([lines[0], "{broken", lines[1], lines[2]]).encode())
    broken = config.model_copy(deep=True)
    broken.data.train_jsonl = [uri]
    dataset, report = stage_dataset("detokenizer_pretrain", broken, "train")
    with pytest.raises(Exception, match=r"exceed the failure budget.*train.jsonl:2 bad_json"):
        dataset.materialize()
    broken.data.failure_budget = 0.25
    dataset, report = stage_dataset("detokenizer_pretrain", broken, "train")
    assert dataset.count() == sum(len(toy_story(config.data.toy, i).record.images) for i in range(3))
    assert report.metrics()["data/bad_bad_json"] == 1 and "1 bad skipped (bad_json=1)" in report.log()
