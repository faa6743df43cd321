"""The toy world: written in the released format, read back equal, judged exactly."""

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from seedstory.config.data import ToyWorldConfig
from seedstory.data.records import parse_story
from seedstory.data.sources import expand_jsonl, read_story_lines
from seedstory.data.stories import load_story, scan_dataset
from seedstory.data.toyworld.captions import FrameFacts, parse_caption
from seedstory.data.story_text import text_stories
from seedstory.data.toyworld.generate import split_of, toy_story, write_toy_world
from seedstory.data.toyworld.judge import Judge, fact_errors
from seedstory.data.toyworld.render import render_frame
from seedstory.data.toyworld.world import possible_events, story_states
from seedstory.storage import join

CONFIG = ToyWorldConfig(stories=12, min_frames=8, max_frames=30, seed=3)


def _round_trip(uri: str) -> None:
    summary = write_toy_world(CONFIG, uri)
    assert summary["stories"] == 12 and sum(summary["splits"].values()) == 12
    lines = list(read_story_lines(expand_jsonl(join(uri, "*.jsonl"))))
    assert len(lines) == 12
    judge = Judge(CONFIG.image_size)
    for line in lines:
        raw = json.loads(line.text)
        assert set(raw) == {"id", "images", "captions", "orders"}
        expected = toy_story(CONFIG, raw["id"])
        assert parse_story(line.text) == expected.record
        story = load_story(line, summary["image_root"])
        for index, state in enumerate(expected.states):
            assert judge.read(story.images[index]) == FrameFacts.of_state(state)
    ledger = scan_dataset(summary["jsonl"]["train"], summary["image_root"], failure_budget=0.0)
    assert ledger.bad_total == 0 and ledger.stories == summary["splits"]["train"]


def test_round_trip_local(tmp_path):
    _round_trip(str(tmp_path / "toy"))


def test_round_trip_s3(s3):
    _round_trip(f"s3://{s3.bucket}/toy-roundtrip")


def test_the_text_corpus_holds_only_train_stories_past_the_world(tmp_path):
    config = CONFIG.model_copy(update={"text_stories": 7})
    summary = write_toy_world(config, str(tmp_path / "toy"))
    assert summary["text"] == {"stories": 7, "jsonl": str(tmp_path / "toy" / "text.jsonl")}
    lines = [json.loads(line) for line in (tmp_path / "toy" / "text.jsonl").read_text().splitlines()]
    ids = [line["id"] for line in lines]
    assert len(ids) == 7 and min(ids) >= config.stories and all(split_of(config, i) == "train" for i in ids)
    skipped = [i for i in range(config.stories, max(ids)) if i not in ids]
    assert skipped and all(split_of(config, i) != "train" for i in skipped)
    assert all(set(line) == {"id", "captions"} for line in lines)
    assert text_stories([summary["text"]["jsonl"]]) == ([toy_story(config, i).record.captions for i in ids], 0)
    assert "text" not in write_toy_world(CONFIG, str(tmp_path / "no-text"))
    assert not (tmp_path / "no-text" / "text.jsonl").exists()


def test_generation_is_deterministic_by_seed():
    assert toy_story(CONFIG, 5) == toy_story(CONFIG, 5)
    assert toy_story(CONFIG, 5).record != toy_story(CONFIG.model_copy(update={"seed": 4}), 5).record


def test_one_thing_changes_per_frame_and_captions_state_the_frame():
    for seed in range(30):
        story = story_states(np.random.default_rng(seed), 30)
        for (_, before), (_, after) in zip(story, story[1:]):
            assert after in [state for _, state in possible_events(before)]
            assert 1 <= len(after.cast) <= 3
    for index in range(CONFIG.stories):
        story = toy_story(CONFIG, index)
        assert len(set(story.record.captions)) > 1
        for caption, state in zip(story.record.captions, story.states):
            assert parse_caption(caption) == FrameFacts.of_state(state), caption


def _gt(index: int) -> tuple[list[Image.Image], list[str]]:
    story = toy_story(CONFIG, index)
    return [render_frame(s, CONFIG.image_size) for s in story.states], list(story.record.captions)


def test_judge_scores_ground_truth_100_percent():
    judge = Judge(CONFIG.image_size)
    for index in range(CONFIG.stories):
        score = judge.score_story(*_gt(index))
        assert score.mean_coherence == 1.0 and score.mean_consistency == 1.0


def test_judge_tolerates_mild_degradation():
    judge = Judge(CONFIG.image_size)
    rng = np.random.default_rng(0)
    images, captions = _gt(1)
    soft = [Image.fromarray(np.clip(np.asarray(i, float) + rng.normal(0, 15, (64, 64, 3)), 0, 255).astype(np.uint8))
            .filter(ImageFilter.GaussianBlur(0.8)).resize((256, 256)) for i in images]
    score = judge.score_story(soft, captions)
    assert score.mean_coherence == 1.0 and score.mean_consistency == 1.0


def test_judge_scores_shuffled_and_noised_frames_low():
    judge = Judge(CONFIG.image_size)
    rng = np.random.default_rng(0)
    stories = [_gt(i) for i in range(CONFIG.stories)]
    pool = [image for images, _ in stories for image in images]
    shuffled = [judge.score_story([pool[rng.integers(len(pool))] for _ in captions], captions)
                for _, captions in stories]
    noised = [judge.score_story([Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in captions],
                                captions) for _, captions in stories]
    assert np.mean([s.mean_coherence for s in shuffled]) < 0.25
    assert np.mean([s.mean_consistency for s in shuffled]) < 0.6
    assert max(s.mean_coherence for s in noised) < 0.1 and max(s.mean_consistency for s in noised) < 0.1


def test_fact_errors_count_each_kind_of_wrong_fact_once():
    stated = FrameFacts("beach", {"Tom": "left", "Mia": "middle", "Ben": "right"}, {"Tom": "big", "Mia": "small", "Ben": "small"})
    shown = FrameFacts("cave", {"Tom": "left", "Mia": "right", "Kit": "middle"}, {"Tom": "small", "Mia": "small", "Kit": "big"})
    assert fact_errors(stated, shown) == {"scene": 1, "missing": 1, "position": 1, "size": 1, "extra": 1}
    assert fact_errors(stated, stated) == {"scene": 0, "missing": 0, "position": 0, "size": 0, "extra": 0}
    assert fact_errors(stated, FrameFacts(None)) == {"scene": 1, "missing": 3, "position": 0, "size": 0, "extra": 0}


@pytest.mark.parametrize("caption, facts", [
    ("Everyone travels to the beach. Tom is on the left, looking big.", FrameFacts("beach", {"Tom": "left"}, {"Tom": "big"})),
    ("Ben heads home. In the cave, Zoe waits in the middle and looks tiny.",
     FrameFacts("cave", {"Zoe": "middle"}, {"Zoe": "small"})),
    ("Kit, small, hurries on the right to meet Mia. Back in the meadow, Mia is in the middle, looking huge.",
     FrameFacts("meadow", {"Kit": "right", "Mia": "middle"}, {"Kit": "small", "Mia": "big"})),
])
def test_caption_parser_reads_facts_by_clause(caption, facts):
    assert parse_caption(caption) == facts
