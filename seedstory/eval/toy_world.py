"""Proof that the toy world is learned: the trained models scored exactly by the world's own judge.

Four measurements on test-split stories (never trained on), each opened with its first frame and
caption:

- de-tokenizer alone: paint each real frame from its ViT features; coherence with its caption;
- teacher-forced: the MLLM reads the true earlier frames and captions plus the true next caption,
  regresses the next image's features, the adapted de-tokenizer paints them; coherence with that caption;
  both also count what their pictures got wrong by kind of fact, which says what bounds them;
- free generation: the story pipeline writes and paints on its own; per segment the caption's
  validity (a legal next world state), image-text coherence and frame-to-frame consistency
  (segment 0 against the opening frame), and how many characters the caption names, beside the
  test stories' own captions: a story that has lost all but one character has few rules left to break;
- the same free generation for every cache and position mode, scored per segment index, so the
  default attention is chosen by quality past the training length, by leads clear of the noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from seedstory import figures
from seedstory.config.model import SchedulerConfig
from seedstory.data.layout import StoryLayout
from seedstory.data.pixels import vit_pixels
from seedstory.data.toyworld.captions import parse_caption
from seedstory.data.toyworld.judge import Judge, coherence_of_facts, consistency_of_facts, fact_errors
from seedstory.data.toyworld.validity import caption_validity
from seedstory.eval.held_out import HeldOutStory
from seedstory.generation import pipeline as story_pipeline
from seedstory.generation.pipeline import StoryPipeline, to_image
from seedstory.models.detokenizer import Detokenizer

PAINT_BATCH = 32


@torch.no_grad()
def vit_features(vit: torch.nn.Module, frames: Sequence[Image.Image]) -> torch.Tensor:
    pixels = torch.from_numpy(np.stack([vit_pixels(frame, vit.config.image_size) for frame in frames]))
    return vit(pixels)


@torch.no_grad()
def paint(detokenizer: Detokenizer, features: torch.Tensor, scheduler: SchedulerConfig,
          seed: int = 0) -> list[Image.Image]:
    """Pictures of [K, Nv, Dv] features, painted in batches with seeded noise and the evaluated config's
    sampler settings (steps, guidance), as its stories are painted."""
    images = []
    for first in range(0, features.shape[0], PAINT_BATCH):
        generator = torch.Generator().manual_seed(seed + first)
        pixels = story_pipeline.paint(detokenizer, features[first:first + PAINT_BATCH], generator, scheduler)
        images += [to_image(p) for p in pixels]
    return images


@dataclass(frozen=True)
class Judged:
    """Pictures read by the judge against their captions: each one's coherence, and the facts they got
    wrong by kind (``fact_errors``), beside the ``pictures`` and stated ``characters`` they come from."""

    coherence: list[float]
    errors: dict[str, int]


def judge_pictures(judge: Judge, images: Sequence[Image.Image], captions: Sequence[str]) -> Judged:
    coherence, errors = [], Counter({"pictures": len(captions), "characters": 0})
    for image, caption in zip(images, captions, strict=True):
        stated, shown = parse_caption(caption), judge.read(image)
        coherence.append(coherence_of_facts(caption, shown))
        errors["characters"] += len(stated.positions)
        errors.update(fact_errors(stated, shown))
    return Judged(coherence, dict(errors))


def detokenizer_alone(detokenizer: Detokenizer, vit: torch.nn.Module, stories: list[HeldOutStory],
                      judge: Judge, frames_per_story: int, scheduler: SchedulerConfig) -> Judged:
    """Each real frame repainted from its own ViT features, judged against its caption."""
    frames = [(frame, caption) for s in stories for frame, caption in
              list(zip(s.frames, s.captions))[:frames_per_story]]
    painted = paint(detokenizer, vit_features(vit, [f for f, _ in frames]), scheduler)
    return judge_pictures(judge, painted, [caption for _, caption in frames])


@torch.no_grad()
def teacher_forced(pipeline: StoryPipeline, stories: list[HeldOutStory], judge: Judge,
                   window_frames: int) -> Judged:
    """The image painted for the true next caption, given the true story so far, judged against that caption."""
    models = pipeline.models
    layout = StoryLayout(models.tokenizer, len(models.mllm.layout.image))
    regressed, captions = [], []
    for story in stories:
        frames = min(window_frames, len(story.frames))
        features = vit_features(models.vit, story.frames[:frames])
        for target in range(1, frames):
            window = layout.build(story.captions[:target + 1])
            is_target = torch.zeros(target + 1, dtype=torch.bool)
            is_target[-1] = True
            out = models.mllm(input_ids=torch.from_numpy(window.input_ids)[None],
                              image_features=features[:target + 1], is_target=is_target)
            regressed.append(out.regressed)
            captions.append(story.captions[target])
    painted = paint(models.detokenizer, torch.cat(regressed), pipeline.config.model.scheduler)
    return judge_pictures(judge, painted, captions)


def free_story_scores(pipeline: StoryPipeline, story: HeldOutStory, judge: Judge, segments: int,
                      seed: int) -> dict[str, list[float]]:
    """A story written from the held-out story's opening, scored by ``story_scores``."""
    written = pipeline.write(story.captions[0], story.frames[0], segments=segments, seed=seed).wait()
    scores = story_scores(judge, story.captions[0], story.frames[0], [s.text for s in written.segments],
                          written.images())
    return {**scores, "outcome": written.outcome.value}


def story_scores(judge: Judge, opening: str, opening_frame: Image.Image, texts: Sequence[str],
                 images: Sequence[Image.Image]) -> dict[str, list[float]]:
    """Per segment: caption validity (0/1), image-text coherence, consistency with the frame before, and
    the characters the caption names."""
    facts = [judge.read(image) for image in [opening_frame, *images]]
    return {
        "validity": [float(v) for v in caption_validity(opening, list(texts))],
        "coherence": [coherence_of_facts(text, fact) for text, fact in zip(texts, facts[1:])],
        "consistency": [consistency_of_facts(facts[i], facts[i - 1]) for i in range(1, len(facts))],
        "characters": [float(characters_named(text)) for text in texts],
    }


def characters_named(caption: str) -> int:
    return len(parse_caption(caption).positions)


def cast_sizes(characters: Sequence[float], validity: Sequence[float] | None = None) -> dict[str, float | None]:
    """How many characters captions name: the mean, and the share naming one at most; with ``validity``
    (written captions), how often each kind is valid (None where there is none of a kind, or no caption:
    a model that ends every story at once writes none)."""
    counts = np.asarray(characters, dtype=float)
    out: dict[str, float | None] = {"characters_per_caption": float(counts.mean()) if counts.size else None,
                                    "one_character_share": float((counts <= 1).mean()) if counts.size else None}
    if validity is not None:
        if len(validity) != len(counts):
            raise ValueError(f"{len(counts)} captions but {len(validity)} verdicts")
        valid = np.asarray(validity, dtype=float)
        for name, kind in (("valid_one_character", counts <= 1), ("valid_more_characters", counts > 1)):
            out[name] = float(valid[kind].mean()) if kind.any() else None
    return out


def per_segment(runs: list[dict[str, list[float]]], segments: int) -> dict[str, list[float | None]]:
    """Mean of each score at each segment index over the stories that reached it."""
    out: dict[str, list[float | None]] = {}
    for name in ("validity", "coherence", "consistency"):
        values = [[run[name][i] for run in runs if i < len(run[name])] for i in range(segments)]
        out[name] = [float(np.mean(v)) if v else None for v in values]
    return out


def overall(runs: list[dict[str, list[float]]], segments: int) -> dict[str, float]:
    """Every one of the ``segments`` asked of every story counts once; a story that ended early scores its
    missing segments 0."""
    if any(len(run["validity"]) > segments for run in runs):
        raise ValueError(f"a run has more than the {segments} segments asked for")
    return {name: float(np.mean([(run[name] + [0.0] * (segments - len(run[name]))) for run in runs]))
            for name in ("validity", "coherence", "consistency")}


def first_segment_past(training_frames: int) -> int:
    """Segment ``i`` is frame ``i + 1`` (frame 0 is the opening), so a training window of ``training_frames``
    frames ends at segment ``training_frames - 2``; the next segment is the first written from more context
    than training ever gave."""
    return training_frames - 1


def beyond_training_length(curves: dict[str, dict[str, list[float | None]]], training_frames: int) -> dict[str, float]:
    """Each variant's mean score over the segments past the training length; empty when its curves stop
    at or before it (then there is nothing to choose a default by)."""
    beyond = {}
    for name, scores in curves.items():
        values = [v for score in scores.values() for v in score[first_segment_past(training_frames):]
                  if v is not None]
        if values:
            beyond[name] = float(np.mean(values))
    return beyond


CLEAR_LEAD_STANDARD_ERRORS = 2.0  # a smaller lead is within one evaluation's noise


def leads_over(curves: dict[str, dict[str, list[float | None]]], default: str,
               training_frames: int) -> dict[str, dict[str, float]]:
    """Each variant's lead over ``default`` past the training length, paired by segment: the mean of the
    differences of each segment's mean score, and their standard error. Segments are paired because every
    variant writes the same stories from the same openings, and the stories' difficulty drifts with length."""
    def segment_means(scores: dict[str, list[float | None]]) -> list[float | None]:
        columns = zip(*scores.values())
        return [None if None in column else float(np.mean(column)) for column in columns]

    if default not in curves:
        return {}
    first = first_segment_past(training_frames)
    reference = segment_means(curves[default])[first:]
    leads = {}
    for name, scores in curves.items():
        if name == default:
            continue
        pairs = [(a, b) for a, b in zip(segment_means(scores)[first:], reference)
                 if a is not None and b is not None]
        if len(pairs) >= 2:
            differences = np.array([a - b for a, b in pairs])
            leads[name] = {"difference": float(differences.mean()),
                           "standard_error": float(differences.std(ddof=1) / np.sqrt(len(differences)))}
    return leads


def clear_leader(leads: dict[str, dict[str, float]]) -> str | None:
    """The variant leading the default by the most among those leading it by more than
    ``CLEAR_LEAD_STANDARD_ERRORS`` standard errors; None when none does. The standard error is over one
    chain's segments with that chain's models: a clear lead is a reason to move the default only when
    another chain of the same recipe shows it too (two such chains have reversed a lead of 0.017)."""
    clear = {name: lead["difference"] for name, lead in leads.items()
             if lead["difference"] > CLEAR_LEAD_STANDARD_ERRORS * lead["standard_error"]}
    return max(clear, key=clear.get) if clear else None


def plot_per_segment(curves: dict[str, dict[str, list[float | None]]], training_frames: int) -> bytes:
    """One panel per score, one line per attention variant, against segment index."""
    figure, axes = figures.subplots(1, 3, figsize=(17, 4.5), sharey=True)
    for axis, name in zip(axes, ("validity", "coherence", "consistency")):
        for variant, scores in curves.items():
            index = [i for i, v in enumerate(scores[name]) if v is not None]
            axis.plot(index, [scores[name][i] for i in index], label=variant, marker=".")
        axis.axvline(first_segment_past(training_frames) - 0.5, color="grey", linestyle=":", label="training length")
        axis.set(xlabel="segment", title=f"caption {name}" if name == "validity" else f"image {name}", ylim=(0, 1.02))
    axes[0].set_ylabel("mean over test stories")
    axes[0].legend(fontsize=8)
    return figures.png(figure)
