"""Generated stories scored against the held-out stories they continue, overall and per segment.

- FID and KID of the generated pictures against the reference set: every true frame after the
  openings of the evaluated stories. Per segment index, the pictures generated at that index
  against the same reference, so a curve shows how quality holds up as a story grows.
- CLIP score text-image (each generated text with its own picture) and image-image (each
  generated picture with the true frame at its place; past the data's end, the last true frame);
  the true captions with their frames give the text-image score a perfect model would approach.
- On the toy world, its exact judge: caption validity, image-text coherence, consistency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from seedstory import figures
from seedstory.config.evaluation import EvalConfig
from seedstory.data.toyworld.judge import Judge
from seedstory.eval import toy_world
from seedstory.eval.extractors import ClipPair, ImageExtractor, as_uint8
from seedstory.eval.held_out import HeldOutStory
from seedstory.eval.image_metrics import FeatureSet, clip_score, extract, fid, kid

EMBED_BATCH = 64


@dataclass(frozen=True)
class GeneratedStory:
    held_out: HeldOutStory
    texts: list[str]
    images: list[Image.Image]


def image_text_metrics(stories: Sequence[GeneratedStory], extractor: ImageExtractor, pair: ClipPair,
                       config: EvalConfig) -> dict:
    """FID, KID and both CLIP scores, overall and per segment index (None where too few pictures)."""
    reference = extract(extractor, [frame for s in stories for frame in s.held_out.frames[1:]])
    placed = [(index, story, image) for story in stories for index, image in enumerate(story.images)]
    generated = extract(extractor, [image for _, _, image in placed])
    embedded = _embed_images(pair, [image for _, _, image in placed])
    text_image = clip_score(_embed_texts(pair, [s.texts[i] for i, s, _ in placed]), embedded)
    image_image = clip_score(embedded, _embed_images(pair, [s.held_out.truth(i) for i, s, _ in placed]))
    at = [index for index, _, _ in placed]
    segments = max(at, default=-1) + 1
    overall = {**_distances(reference, generated, config), "clip_text_image": _mean(text_image),
               "clip_image_image": _mean(image_image)}
    per_segment: dict[str, list[float | None]] = {name: [] for name in overall}
    for index in range(segments):
        rows = [row for row, where in enumerate(at) if where == index]
        distances = _distances(reference, generated.subset(rows), config) if len(rows) >= 2 else {}
        for name in ("fid", "kid", "kid_std"):
            per_segment[name].append(distances.get(name))
        per_segment["clip_text_image"].append(_mean([text_image[row] for row in rows]))
        per_segment["clip_image_image"].append(_mean([image_image[row] for row in rows]))
    truth = [(s.held_out.captions[i], s.held_out.frames[i]) for s in stories for i in range(1, len(s.held_out.frames))]
    truth_text_image = clip_score(_embed_texts(pair, [c for c, _ in truth]), _embed_images(pair, [f for _, f in truth]))
    return {"overall": overall, "per_segment": per_segment, "truth": {"clip_text_image": _mean(truth_text_image)},
            "extractor": generated.extractor,
            "clip": pair.identity(), "pictures": {"generated": len(generated), "reference": len(reference)}}


def toy_judge_metrics(stories: Sequence[GeneratedStory], judge: Judge, segments: int) -> dict:
    """The toy world's exact scores of the ``segments`` asked of each story (one that ended early scores 0
    for the rest)."""
    runs = [toy_world.story_scores(judge, s.held_out.captions[0], s.held_out.frames[0], s.texts, s.images)
            for s in stories]
    return {"overall": toy_world.overall(runs, segments), "per_segment": toy_world.per_segment(runs, segments)}


def plot_per_segment(curves: dict[str, dict[str, list[float | None]]], training_frames: int) -> bytes:
    """One panel per metric, one line per evaluated model, against segment index."""
    names = sorted({name for metrics in curves.values() for name in metrics if not name.endswith("_std")})
    columns = min(len(names), 4)
    rows = -(-len(names) // columns)
    figure, axes = figures.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.set_visible(False)
    for axis, name in zip(axes.flat, names):
        for label, metrics in curves.items():
            values = metrics.get(name, [])
            index = [i for i, v in enumerate(values) if v is not None]
            axis.plot(index, [values[i] for i in index], label=label, marker=".")
        axis.axvline(toy_world.first_segment_past(training_frames) - 0.5, color="grey", linestyle=":")
        axis.set(xlabel="segment", title=name)
    axes.flat[0].legend(fontsize=8)
    return figures.png(figure, dpi=100)


def _distances(reference: FeatureSet, generated: FeatureSet, config: EvalConfig) -> dict[str, float]:
    kid_mean, kid_std = kid(reference, generated, config.kid_subset_size, config.kid_subsets, config.seed)
    return {"fid": fid(reference, generated), "kid": kid_mean, "kid_std": kid_std}


def _embed_images(pair: ClipPair, images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.cat([pair.embed_images(as_uint8(images[first:first + EMBED_BATCH]))
                      for first in range(0, len(images), EMBED_BATCH)])


def _embed_texts(pair: ClipPair, texts: Sequence[str]) -> torch.Tensor:
    return torch.cat([pair.embed_texts(texts[first:first + EMBED_BATCH]) for first in range(0, len(texts), EMBED_BATCH)])


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None
