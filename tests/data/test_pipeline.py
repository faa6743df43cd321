"""Ray Data pipelines over the local stack: S3 -> stories -> stage samples -> 2 Ray Train workers."""

import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pytest
import ray
import torch
from PIL import Image
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from seedstory.config import load_config
from seedstory.data.layout import IGNORE_INDEX
from seedstory.data.badrecords import FailureBudgetExceeded
from seedstory.data.pipeline import (FrameCut, StoryLedger, StorySamples, decode_pool, groups_of, passes_for,
                                     samples_per_pass, stage_cut, stage_dataset, validation_set)
from seedstory.data.streams import StoryStream, groups_per_execution, stage_stream
from seedstory.data.sources import StoryLine
from seedstory.data.story_sets import ReleasedStories, split_stories
from seedstory.data.toyworld.generate import toy_story, write_toy_world
from seedstory.data.stage_collate import WindowCollate
from seedstory.data.windows import story_windows, window_count
from seedstory.storage import write_bytes
from seedstory.tokenizer import build_tiny_tokenizer, image_token_ids

pytestmark = pytest.mark.stack

STORIES = 10


@pytest.fixture(scope="module")
def toy(s3):
    uri = f"s3://{s3.bucket}/toy-pipeline"
    config = load_config("tiny", [
        f"data.toy.stories={STORIES}", "data.toy.min_frames=6", "data.toy.max_frames=14", "data.toy.val_fraction=0.0",
        "data.toy.test_fraction=0.0", f"data.train_jsonl=[{uri}/train.jsonl]", f"data.image_root={uri}/images",
        "data.failure_budget=0.0", "data.preprocess_batch_size=2",
    ])
    summary = write_toy_world(config.data.toy, uri)
    captions = [c for i in range(STORIES) for c in toy_story(config.data.toy, i).record.captions]
    tokenizer = build_tiny_tokenizer([*captions, "[INST]"], config.model.llm.vocab_size, config.model.image_tokens)
    return config, summary, tokenizer


def _frames(config) -> dict[int, int]:
    return {i: len(toy_story(config.data.toy, i).record.images) for i in range(STORIES)}


def _with_jsonl(config, s3, name: str, split: str, lines: list[str]):
    uri = f"s3://{s3.bucket}/toy-pipeline-{name}.jsonl"
    write_bytes(uri, "\n".join(lines).encode())
    config = config.model_copy(deep=True)
    setattr(config.data, f"{split}_jsonl", [uri])
    return config


def _ids(batch: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.asarray(batch[name]).astype(np.int64)) for name in names}


class WindowsWithIds(WindowCollate):
    ids = ("key", "pass", "start", "num_images")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = super().__call__(batch)
        assert out["input_ids"].shape == out["labels"].shape == out["image_mask"].shape
        assert out["vit_pixels"].shape[0] == int(out["num_images"].sum())
        assert bool((out["labels"] != IGNORE_INDEX).any(dim=1).all())
        return {**out, **_ids(batch, ("key", "pass", "start"))}


class FrameIds(NumpyBatchCollateFn):
    ids = ("key", "frame", "pass")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return _ids(batch, self.ids)


def _two_passes(stream, collate) -> list[list[tuple]]:
    """This worker's batches of the stream's first two passes, as id tuples."""
    context = ray.train.get_context()
    batches = []
    for batch, position in stream.batches(context.get_world_rank(), context.get_world_size(), 4, collate, {}):
        if position["pass"] >= 2:
            return batches
        batches.append(list(zip(*(batch[name].tolist() for name in collate.ids))))
    return batches


def _pass_groups(stream, passes: int) -> int:
    """Groups enough for ``passes`` whole passes of either of 2 workers in one execution."""
    return passes * max(len(groups_of(stream.dealt(rank, 2, 0), 0, stream.config.data.preprocess_batch_size))
                        for rank in (0, 1))


def _consume(train_config: dict) -> None:
    """Stage-2 windows, then stage-1 frames, as each worker's stream gives them."""
    seen = {"windows": _two_passes(train_config["windows"], train_config["window_collate"]),
            "frames": _two_passes(train_config["frames"], FrameIds())}
    with open(f"{train_config['out']}/rank{ray.train.get_context().get_world_rank()}.json", "w") as f:
        json.dump(seen, f)


@pytest.fixture(scope="module")
def consumed(toy, ray_cluster, tmp_path_factory):
    """Two passes of stage-2 windows and of stage-1 frames, read by 2 Ray Train workers."""
    config, _, tokenizer = toy
    windows, report = stage_stream("story_instruct", config, tokenizer)
    frames_config = config.model_copy(deep=True)
    frames_config.data.preprocess_batch_size = 4
    frames, _ = stage_stream("detokenizer_pretrain", frames_config)
    out = tmp_path_factory.mktemp("consumed")
    trainer = TorchTrainer(
        _consume,
        train_loop_config={"windows": replace(windows, groups=_pass_groups(windows, 2)),
                           "frames": replace(frames, groups=_pass_groups(frames, 2)),
                           "window_collate": WindowsWithIds(image_token_ids(tokenizer, 16).pad), "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="data-pipeline-test", storage_path=str(out / "runs")),
    )
    trainer.fit()
    per_rank = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return per_rank, report


def test_stage2_windows_are_fresh_every_pass_and_start_at_any_frame(toy, consumed):
    config, _, _ = toy
    per_rank, report = consumed
    assert all(rank["windows"] for rank in per_rank)
    seen = [tuple(row) for rank in per_rank for batch in rank["windows"] for row in batch]
    frames = _frames(config)
    per_pass = sum(window_count(n, 10, 1) for n in frames.values())
    assert len(seen) >= 2 * per_pass - 2 * 3  # each worker's last partial batch of 4 is dropped
    for (key, pass_index), rows in itertools.groupby(sorted(seen), key=lambda row: row[:2]):
        drawn = Counter((w.start, w.length) for w in story_windows(str(key), frames[key], 10, 1, 0, pass_index))
        assert not Counter((start, length) for _, _, start, length in rows) - drawn, (key, pass_index)
    windows = [{(key, start, length) for key, p, start, length in seen if p == pass_index} for pass_index in (0, 1)]
    assert windows[0] != windows[1]
    assert any(start % 10 for _, _, start, _ in seen)
    metrics = report.metrics()
    assert metrics["data/stories"] == STORIES and metrics["data/bad_total"] == 0
    assert metrics["data/windows_too_long"] == 0


def test_stage1_batches_mix_stories_in_a_new_order_every_pass_each_frame_once(toy, consumed):
    """Each pass deals every story to one worker; a worker's last partial batch (< 4) is all that is dropped."""
    config = toy[0]
    per_rank, _ = consumed
    frames = _frames(config)
    everything = Counter((key, frame) for key in frames for frame in range(frames[key]))
    for pass_index in (0, 1):
        seen = Counter((key, frame) for rank in per_rank for batch in rank["frames"] for key, frame, p in batch
                       if p == pass_index)
        assert not seen - everything and max(seen.values()) == 1, pass_index
        assert sum(seen.values()) >= sum(everything.values()) - (2 * 3 if pass_index == 1 else 0), pass_index
    for batches in (rank["frames"] for rank in per_rank):
        order = [[(key, frame) for batch in batches for key, frame, p in batch if p == pass_index]
                 for pass_index in (0, 1)]
        assert order[0] != order[1]
        for batch in batches:
            keys, frame_ids = {key for key, _, _ in batch}, [frame for _, frame, _ in batch]
            assert len(keys) > 1 or frame_ids != list(range(frame_ids[0], frame_ids[0] + 4)), batch
        assert np.mean([len({key for key, _, _ in batch}) for batch in batches]) >= 2


def test_a_stream_started_mid_group_reads_exactly_the_rest_and_fetches_nothing_before_it(toy, ray_cluster):
    config, _, tokenizer = toy
    stream, _ = stage_stream("story_instruct", config, tokenizer)
    columns = ("pass", "group", "index", "key", "start", "num_images")
    one_pass = len(groups_of(stream.dealt(1, 2, 0), 0, config.data.preprocess_batch_size))
    whole = [tuple(row[c] for c in columns) for row in replace(stream, groups=one_pass).dataset(1, 2, {}).take_all()]
    cut = next(i for i, row in enumerate(whole) if row[1] > 0 and row[2] > 0)
    pass_index, group, index = whole[cut][:3]
    fresh, report = stage_stream("story_instruct", config, tokenizer)
    start = {"pass": pass_index, "group": group, "index": index}
    rest = [tuple(row[c] for c in columns)
            for row in replace(fresh, groups=one_pass).dataset(1, 2, start).take_all()]
    assert rest == whole[cut:]
    stories = [g.stories for g in groups_of(stream.dealt(1, 2, 0), 0, config.data.preprocess_batch_size)]
    assert report.metrics()["data/stories"] == sum(len(s) for s in stories[group:]) < len(stream.dealt(1, 2, 0))


def test_a_stream_resumed_after_its_last_full_batch_goes_on_with_the_next_pass(toy, ray_cluster):
    config = toy[0]
    stream, _ = stage_stream("detokenizer_pretrain", config)
    last = len(groups_of(stream.dealt(0, 2, 0), 0, config.data.preprocess_batch_size)) - 1
    batch, position = next(stream.batches(0, 2, 4, FrameIds(), {"pass": 0, "group": last, "index": 10_000}))
    assert position["pass"] == 1 and {p for _, _, p in zip(*(batch[n].tolist() for n in FrameIds.ids))} == {1}


def test_a_resumed_stream_ends_its_executions_where_the_uninterrupted_one_did(toy, ray_cluster):
    """Each execution drops its last partial micro-batch: a run resumed anywhere, on any cluster, must keep
    the boundaries."""
    config = toy[0]
    stream, _ = stage_stream("detokenizer_pretrain", config)
    stream = replace(stream, groups=3)
    per_pass = len(stream.groups_of_pass(0, 2, 0))
    executions, position = [], {}
    while sum(map(len, executions)) < 3 * per_pass:
        scheduled = stream.schedule(0, 2, position)
        assert len(scheduled) == 3
        executions.append([(g.pass_index, g.group) for g in scheduled])
        position = {"pass": scheduled[-1].pass_index, "group": scheduled[-1].group + 1}
    assert len({p for execution in executions for p, _ in execution}) >= 3, "the walk crosses passes"
    for execution in executions:
        for at, (pass_index, group) in enumerate(execution):
            resumed = stream.schedule(0, 2, {"pass": pass_index, "group": group, "index": 1})
            assert [(g.pass_index, g.group) for g in resumed] == execution[at:], (pass_index, group)
            assert resumed[0].skip == 1
            elsewhere = replace(stream, groups=2).schedule(0, 2, {"pass": pass_index, "group": group, "groups": 3})
            assert [(g.pass_index, g.group) for g in elsewhere] == execution[at:], "a cluster sizing executions otherwise"


@dataclass
class StartCountingStream(StoryStream):
    """Records the groups of every execution it starts."""

    started: list = field(default_factory=list)

    def _samples(self, scheduled, world):
        self.started.append(scheduled)
        return super()._samples(scheduled, world)


def test_a_stream_chained_over_one_group_executions_reads_each_groups_samples_in_order(toy, ray_cluster):
    """The samples of one execution per group are those of one long execution, less each group's last
    partial micro-batch, and every position names the sample after the batch. Each execution starts
    when the one before it has delivered half of its batches."""
    config = toy[0]
    stream, _ = stage_stream("detokenizer_pretrain", config)
    per_pass = len(groups_of(stream.dealt(0, 2, 0), 0, config.data.preprocess_batch_size))
    rows = replace(stream, groups=per_pass).dataset(0, 2, {}).take_all()
    expected, halfway = [], {}
    for key, group in itertools.groupby(rows, key=lambda row: (row["pass"], row["group"])):
        group = [(int(row["key"]), row["frame"], row["group"], row["index"]) for row in group]
        expected += group[:len(group) // 4 * 4]
        halfway[key[1]] = len(group) // 4 // 2
    chained, read = [], Counter()
    counting = StartCountingStream(**{**{f.name: getattr(stream, f.name) for f in fields(stream)}, "groups": 1})
    for batch, position in counting.batches(0, 2, 4, FrameIds(), {}):
        if position["pass"] > 0:
            break
        chained += [(key, frame) for key, frame, _ in zip(*(batch[name].tolist() for name in FrameIds.ids))]
        last = expected[len(chained) - 1]
        group = position["group"]
        assert (group, position["index"]) == (last[2], last[3] + 1)
        assert len(counting.started) == group + 1 + (read[group] >= halfway[group]), (group, read[group])
        read[group] += 1
    assert chained == [(key, frame) for key, frame, _, _ in expected] and len(chained) > 4


def test_a_cuts_story_bytes_bound_the_samples_it_makes(toy, ray_cluster):
    config, _, tokenizer = toy
    frames = _frames(config)
    for stage in ("detokenizer_pretrain", "detokenizer_adapt"):  # frames; windows with their target
        cut = stage_cut(stage, config, tokenizer)
        dataset, _ = stage_dataset(stage, config, "train", tokenizer=tokenizer)
        made = Counter()
        for row in dataset.take_all():
            made[row["key"]] += sum(np.asarray(value).nbytes for name, value in row.items() if name != "key")
        for key, nbytes in made.items():
            bound = cut.story_bytes(frames[int(key)])
            assert nbytes <= bound, (stage, key)
            if stage == "detokenizer_pretrain":
                assert bound <= 1.02 * nbytes, key


def test_an_execution_holds_as_many_groups_as_fit_in_the_workers_share_of_the_object_store(toy, ray_cluster):
    config = toy[0]
    stories = split_stories(config, "train")
    cut = stage_cut("detokenizer_pretrain", config)
    world = config.train.detokenizer_pretrain.num_workers
    per_pass = -(-len(stories) // (world * config.data.preprocess_batch_size))
    group_bytes = sum(cut.story_bytes(stories.frames(i)) for i in range(len(stories))) / world / per_pass
    store = ray.cluster_resources()["object_store_memory"]

    def groups(fraction: float) -> int:
        sized = config.model_copy(deep=True)
        sized.data.stream_object_store_fraction = fraction
        return groups_per_execution("detokenizer_pretrain", sized, stories, cut)

    executions = 2 * world  # each worker's stream holds the execution it reads and the next one
    assert groups(2.5 * group_bytes * executions / store) == 2
    assert groups(0.1 * group_bytes * executions / store) == 1
    assert groups(1.0) == passes_for("detokenizer_pretrain", config, stories, cut) * per_pass


def test_stage1_and_stage3_samples_have_model_shapes(toy, ray_cluster):
    config, summary, tokenizer = toy
    frames, _ = stage_dataset("detokenizer_pretrain", config, "train")
    rows = frames.take_all()
    assert len(rows) == summary["frames"]
    assert rows[0]["vit_pixels"].shape == (3, 56, 56) and rows[0]["sd_pixels"].shape == (3, 64, 64)
    assert rows[0]["vit_pixels"].dtype == rows[0]["sd_pixels"].dtype == np.uint8, "a quarter of float32's bytes"
    assert rows[0]["add_time_ids"].tolist() == [64, 64, 0, 0, 64, 64]
    windows, _ = stage_dataset("detokenizer_adapt", config, "train", tokenizer=tokenizer)
    batch = next(iter(windows.iter_torch_batches(batch_size=3, collate_fn=WindowCollate(0))))
    assert batch["sd_pixels"].shape == (3, 3, 64, 64) and batch["add_time_ids"].shape == (3, 6)
    assert batch["vit_pixels"].dtype == torch.float32


def test_the_training_stream_holds_enough_passes_for_max_steps(toy):
    config, summary, tokenizer = toy
    lines = [StoryLine("train.jsonl", i + 1, toy_story(config.data.toy, i).record.to_line()) for i in range(STORIES)]
    lines.append(StoryLine("train.jsonl", STORIES + 1, "{broken"))
    stories = ReleasedStories(lines, config.data.image_root, "the train split")
    frames = _frames(config)
    frame_cut, window_cut = stage_cut("detokenizer_pretrain", config), stage_cut("story_instruct", config, tokenizer)
    assert samples_per_pass(frame_cut, stories) == summary["frames"]
    windows = sum(window_count(n, 10, 1) for n in frames.values())
    assert samples_per_pass(window_cut, stories) == windows
    s = config.train.detokenizer_pretrain
    needed = s.max_steps * s.grad_accum_steps * s.micro_batch_size * s.num_workers
    passes = passes_for("detokenizer_pretrain", config, stories, frame_cut)
    assert (passes - 1) * summary["frames"] >= needed > (passes - 2) * summary["frames"]  # one spare pass
    with pytest.raises(ValueError, match="the train split yields no story_instruct sample"):
        passes_for("story_instruct", config, ReleasedStories(lines[-1:], config.data.image_root, "the train split"),
                   window_cut)


def test_the_val_split_is_the_same_samples_in_the_same_order_every_time(toy, ray_cluster, s3):
    config, _, tokenizer = toy
    config = _with_jsonl(config, s3, "val", "val", [toy_story(config.data.toy, i).record.to_line() for i in (3, 1, 4)])
    settings = config.train.story_instruct
    whole, report = validation_set("story_instruct", config, tokenizer)
    rows = [(r["key"], r["pass"], r["start"], r["num_images"]) for r in whole.take_all()]
    assert [key for key, *_ in rows] == sorted((key for key, *_ in rows), key=["3", "1", "4"].index)
    assert {p for _, p, _, _ in rows} == {0} and report.metrics("val_data")["val_data/stories"] == 3
    settings.val_batches, settings.micro_batch_size = 1, 1
    first, _ = validation_set("story_instruct", config, tokenizer)
    assert [(r["key"], r["pass"], r["start"], r["num_images"]) for r in first.take_all()] == \
        rows[:settings.micro_batch_size * settings.num_workers]


def test_an_empty_val_split_is_a_clear_error(toy, ray_cluster, s3):
    config, _, tokenizer = toy
    config = _with_jsonl(config, s3, "val-bad", "val", ["{broken", "{\"images\": []}"])
    config.data.failure_budget = 1.0
    with pytest.raises(ValueError, match=r"val split .* yields 0 detokenizer_pretrain samples.*val_every=null"):
        validation_set("detokenizer_pretrain", config)


def test_bad_records_past_the_budget_stop_the_pipeline_naming_them(toy, ray_cluster, s3):
    config, summary, tokenizer = toy
    lines = [toy_story(config.data.toy, i).record.to_line() for i in range(3)]
    broken = _with_jsonl(config, s3, "bad", "train", [lines[0], "{broken", lines[1], lines[2]])
    dataset, report = stage_dataset("detokenizer_pretrain", broken, "train")
    with pytest.raises(Exception, match=r"exceed the failure budget.*\.jsonl:2 bad_json"):
        dataset.materialize()
    broken.data.failure_budget = 0.25
    dataset, report = stage_dataset("detokenizer_pretrain", broken, "train")
    assert dataset.count() == sum(len(toy_story(config.data.toy, i).record.images) for i in range(3))
    assert report.metrics()["data/bad_bad_json"] == 1 and "1 bad skipped (bad_json=1)" in report.log()


def _group(stories: list[int]) -> dict[str, np.ndarray]:
    """A map batch: one group of stories of pass 0, nothing skipped."""
    return {"pass": np.zeros(len(stories), dtype=np.int64), "group": np.zeros(len(stories), dtype=np.int64),
            "story": np.array(stories), "skip": np.zeros(len(stories), dtype=np.int64)}


def _stories(config, indices, *extra: StoryLine) -> ReleasedStories:
    lines = [StoryLine("train.jsonl", n + 1, toy_story(config.data.toy, i).record.to_line()) for n, i in enumerate(indices)]
    return ReleasedStories([*lines, *extra], config.data.image_root)


@pytest.mark.parametrize("stage", ["detokenizer_pretrain", "detokenizer_adapt"])
def test_every_picture_is_decoded_once_per_pass(toy, ray_cluster, monkeypatch, stage):
    """Checking a story decodes its pictures; the samples are cut from those, not from the bytes again
    (stage 3's windows share frames: before, each window decoded its own)."""
    config, _, tokenizer = toy
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    stories = _stories(config, (0, 1))
    ledger = ray.remote(num_cpus=0)(StoryLedger).remote(len(stories), 0.0)
    samples = StorySamples(ray.put(stories), ledger, stage_cut(stage, config, tokenizer), seed=0)
    out = samples(_group([0, 1]))
    frames = sum(len(toy_story(config.data.toy, i).record.images) for i in (0, 1))
    assert len(opened) == frames
    windows = sum(window_count(len(toy_story(config.data.toy, i).record.images), 10, 1) for i in (0, 1))
    assert len(out["key"]) == (frames if stage == "detokenizer_pretrain" else windows)


LEDGER_DELAY = 3.0


class SlowLedger(StoryLedger):
    def add(self, *args, **kwargs):
        time.sleep(LEDGER_DELAY)
        return super().add(*args, **kwargs)


def test_a_good_batch_never_waits_for_the_ledger_and_a_bad_one_gets_its_verdict(toy, ray_cluster):
    config, _, _ = toy
    stories = _stories(config, (0, 1), StoryLine("train.jsonl", 3, "{broken"))
    ledger = ray.remote(num_cpus=0)(SlowLedger).remote(len(stories), 0.0)
    samples = StorySamples(ray.put(stories), ledger, FrameCut(56, 64), seed=None)
    started = time.monotonic()
    assert len(samples(_group([0]))["key"]) > 0
    assert time.monotonic() - started < LEDGER_DELAY
    with pytest.raises(FailureBudgetExceeded, match=r"train.jsonl:3 bad_json"):
        samples(_group([1, 2]))
    counted, _ = ray.get(ledger.snapshot.remote())
    assert (counted.stories, counted.bad_total) == (2, 1)


def test_the_decode_pool_grows_into_the_cpus_training_leaves_free(toy, ray_cluster):
    assert load_config("paper").data.decode_concurrency is None
    config = toy[0].model_copy(deep=True)
    config.data.decode_concurrency = None
    free = ray.cluster_resources()["CPU"] - 1.0
    pool = decode_pool(config.data, reserved_cpus=1.0)
    assert (pool.min_size, pool.max_size) == (1, int(free / config.data.actor_cpus)) and pool.max_size > 1
    shared = decode_pool(config.data, reserved_cpus=1.0, pools=2)
    assert (shared.min_size, shared.max_size) == (1, int(free / 2 / config.data.actor_cpus))
    config.data.decode_concurrency = 3
    pool = decode_pool(config.data, reserved_cpus=1.0)
    assert (pool.min_size, pool.max_size) == (3, 3)


def test_a_decoding_actor_imports_neither_torch_nor_transformers():
    """Every Ray Data execution of a stream starts its decoding actors afresh, and on a busy node those two
    imports cost each actor seconds of the CPU training runs on; a tokenizer in a window cut brings in what it needs."""
    probe = "import sys, seedstory.data.pipeline; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
