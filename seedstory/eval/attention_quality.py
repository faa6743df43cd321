"""The quality columns of the paper's Table 2: trained models tell the test split's stories in every
attention mode, and each mode's pictures are scored at each story length.

Every mode continues the same openings with the same seed, so the modes differ only in what the
model attends to. One story of the longest length serves every shorter one: generation is
deterministic and causal, so its first L segments are exactly the story of length L. Time and KV
memory are the trained model's own, measured in the same stories (the random-model benchmark
measures them at a larger shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from seedstory.config import SeedStoryConfig
from seedstory.eval.extractors import ClipPair, ImageExtractor
from seedstory.eval.held_out import HeldOutStory
from seedstory.eval.story_metrics import GeneratedStory, image_text_metrics
from seedstory.generation.attention_bench import MODES, POSITIONED
from seedstory.generation.pipeline import StoryModels, StoryPipeline

QUALITY = ("fid", "kid", "kid_std", "clip_text_image", "clip_image_image")


def mode_config(config: SeedStoryConfig, mode: str, positions: str | None = None) -> SeedStoryConfig:
    """``config`` telling stories in ``mode``: a cache mode (with ``positions``, or the configured ones)
    or ``recompute-window`` (the dense cache rebuilt from the last segments)."""
    story = config.story
    if mode == "recompute-window":
        story = story.model_copy(update={"context": "recompute-window",
                                         "cache": story.cache.model_copy(update={"mode": "dense"})})
    else:
        cache = story.cache.model_copy(update={"mode": mode, "positions": positions or story.cache.positions})
        story = story.model_copy(update={"context": "cache", "cache": cache})
    return config.model_copy(update={"story": story})


def quality_table(config: SeedStoryConfig, models: StoryModels, stories: Sequence[HeldOutStory],
                  lengths: Sequence[int], extractor: ImageExtractor, pair: ClipPair, modes: Sequence[str] = MODES,
                  progress: Callable[[str], None] = print) -> list[dict]:
    """A row per mode and length: FID/KID and CLIP scores, mean story time and KV memory at that length."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown attention mode(s) {', '.join(unknown)}; the modes are {', '.join(MODES)}")
    rows = []
    for mode in modes:
        pipeline = StoryPipeline(models, mode_config(config, mode))
        told = [pipeline.write(s.captions[0], s.frames[0], segments=max(lengths), seed=config.eval.seed).wait()
                for s in stories]
        for length in lengths:
            generated = [GeneratedStory(s, [seg.text for seg in t.segments[:length]], t.images()[:length])
                         for s, t in zip(stories, told)]
            metrics = image_text_metrics(generated, extractor, pair, config.eval)["overall"]
            reached = [t.segments[:length] for t in told]
            rows.append({
                "mode": mode, "segments": length,
                "positions": config.story.cache.positions if mode in POSITIONED else None,
                **{name: metrics[name] for name in QUALITY},
                "stories_reaching_length": sum(len(r) == length for r in reached),
                "time_s": float(np.mean([sum(seg.stats.wall_s for seg in r) for r in reached])),
                "kv_mib": float(np.mean([r[-1].stats.kv_bytes for r in reached if r])) / 2**20,
            })
            progress(f"{mode} @ {length}: " + ", ".join(f"{k} {rows[-1][k]:.4g}" for k in (*QUALITY, "time_s", "kv_mib")))
    return rows
