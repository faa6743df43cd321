"""Stories from trained models: load the parts, open with a sentence (and an image), write, paint.

The MLLM (its peft adapter merged into the base LLM, both resamplers, its tokenizer) and the
adapted de-tokenizer (UNet, condition adapter, VAE) load from the model registry by alias or from
any export URI; the frozen ViT is the one the MLLM export was trained with. An opening image goes
through the ViT exactly as training's first frame does.

Painting runs on a worker thread fed from the story loop's iterator: the loop never waits for a
picture (a decoded image is never re-encoded), so segment i+1's text is written while image i is
painted. ``StoryTimings`` measures how much of the painting that hides.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from mlflow import MlflowClient
from PIL import Image
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.config.generation import SEED_LIMIT, StoryConfig
from seedstory.config.model import SchedulerConfig
from seedstory.data.badrecords import BadRecordError
from seedstory.data.images import decode_image
from seedstory.data.pixels import vit_pixels
from seedstory.generation.story import Outcome, SegmentStats, Story, StoryGenerator, StoryStart
from seedstory.generation.story_engine import StoryEngine
from seedstory.generation.storybook import Storybook
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.export import load_detokenizer, load_mllm, load_mllm_vit
from seedstory.models.lora import merge_lora
from seedstory.models.mllm import SeedStoryMLLM
from seedstory.models.vit import VisionTransformer
from seedstory.models.weights import WeightsError
from seedstory.storage import read_bytes
from seedstory.tokenizer import INST
from seedstory.training.registry import ResolvedSource, resolve_source
from seedstory.tracking import use_tracking

PARTS = ("mllm", "detokenizer")


class StoryInputError(ValueError):
    """A story request that cannot be served; the message names the field and the problem."""


def read_image(uri: str) -> Image.Image:
    """An opening picture from a local path or s3:// URI (JPEG or PNG), or an error naming the problem."""
    try:
        data = read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as err:  # ValueError: a malformed URI
        raise StoryInputError(f"image: cannot read {uri}: {getattr(err, 'strerror', None) or err}") from None
    try:
        return decode_image(data)
    except BadRecordError as err:
        raise StoryInputError(f"image: {uri}: {err.detail}") from None


def model_references(config: SeedStoryConfig, alias: str, mllm: str | None = None,
                     detokenizer: str | None = None) -> dict[str, str]:
    """What to load: the stage-2 and stage-3 registered models at ``alias``, unless a URI is given."""
    return {
        "mllm": mllm or f"models:/{config.train.story_instruct.registered_model}@{alias}",
        "detokenizer": detokenizer or f"models:/{config.train.detokenizer_adapt.registered_model}@{alias}",
    }


def resolve_models(config: SeedStoryConfig, references: dict[str, str]) -> dict[str, ResolvedSource]:
    """Registry references to export URIs (and the versions and runs behind them)."""
    client = MlflowClient(use_tracking(config.tracking)) if any(
        r.startswith("models:/") for r in references.values()) else None
    return {name: resolve_source(client, reference) for name, reference in references.items()}


def load_writer(uri: str, device: str | torch.device = "cpu"
                ) -> tuple[SeedStoryMLLM, PreTrainedTokenizerBase, VisionTransformer]:
    """The writing half of a story on ``device``: the MLLM (LoRA merged), its tokenizer and the ViT it was
    trained with."""
    mllm, tokenizer = load_mllm(uri)
    if tokenizer is None:
        raise WeightsError(f"{uri}: the MLLM export holds no tokenizer/, so its text cannot be read")
    merge_lora(mllm)
    return mllm.to(device).eval(), tokenizer, load_mllm_vit(uri, device)


@dataclass
class StoryModels:
    """Every part a story needs, on one device, in eval mode."""

    mllm: SeedStoryMLLM
    tokenizer: PreTrainedTokenizerBase
    vit: VisionTransformer
    detokenizer: Detokenizer
    sources: dict[str, ResolvedSource]

    @classmethod
    def load(cls, sources: dict[str, ResolvedSource]) -> StoryModels:
        missing = [part for part in PARTS if part not in sources]
        if missing:
            raise ValueError(f"no source for {', '.join(missing)}")
        mllm, tokenizer, vit = load_writer(sources["mllm"].uri)
        return cls(mllm=mllm, tokenizer=tokenizer, vit=vit,
                   detokenizer=load_detokenizer(sources["detokenizer"].uri).eval(), sources=sources)

    def versions(self) -> dict[str, dict[str, str | None]]:
        """What was served, for story.json and the logs: reference, version, run and folder of each part."""
        return {name: asdict(source) for name, source in self.sources.items()}


@dataclass
class StoryTimings:
    """``overlap``: the share of the shorter of writing and painting hidden behind the other (1 = all)."""

    write_s: float = 0.0
    paint_s: float = 0.0
    wall_s: float = 0.0

    @property
    def overlap(self) -> float:
        shorter = min(self.write_s, self.paint_s)
        return (self.write_s + self.paint_s - self.wall_s) / shorter if shorter > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "overlap": self.overlap}


def painting_generator(story_seed: int, index: int) -> torch.Generator:
    """The painting noise of one picture. On the CPU whatever device paints (diffusers draws it there and
    moves it), so the same story seed paints the same pictures wherever it runs."""
    return torch.Generator().manual_seed(story_seed * 1_000_003 + index)


def paint(detokenizer: Detokenizer, features: torch.Tensor, generator: torch.Generator | list[torch.Generator],
          scheduler: SchedulerConfig) -> torch.Tensor:
    """Pictures [K, 3, S, S] with the sampler settings of the config being served (steps, guidance),
    which may differ from those the de-tokenizer was exported with."""
    return detokenizer.decode(features, steps=scheduler.inference_steps, generator=generator,
                              guidance_scale=scheduler.guidance_scale)


class Painter:
    """One worker thread that turns features into pictures, each with its own seeded noise."""

    def __init__(self, detokenizer: Detokenizer, seed: int, scheduler: SchedulerConfig) -> None:
        self.detokenizer = detokenizer
        self.seed = seed
        self.scheduler = scheduler
        self.busy_s = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="painter")

    def submit(self, features: torch.Tensor, index: int) -> Future[Image.Image]:
        return self._pool.submit(self._paint, features, index)

    @torch.no_grad()
    def _paint(self, features: torch.Tensor, index: int) -> Image.Image:
        began = time.perf_counter()
        generator = painting_generator(self.seed, index)
        pixels = paint(self.detokenizer, features[None], generator, self.scheduler)[0]
        self.busy_s += time.perf_counter() - began
        return to_image(pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def to_image(pixels: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] -> an RGB picture."""
    array = (pixels.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


@dataclass
class PaintedSegment:
    """A segment as soon as its text exists; ``image`` resolves when its picture is painted."""

    index: int
    text: str
    features: torch.Tensor
    image: Future[Image.Image]
    stats: SegmentStats


@dataclass
class WrittenStory:
    """Iterate for segments as they are written; afterwards ``outcome`` and ``timings`` are set
    (``timings.wall_s`` once every picture is painted: call ``images()`` or ``wait()``)."""

    opening: str
    opening_image: Image.Image | None
    settings: StoryConfig
    segments: list[PaintedSegment] = field(default_factory=list)
    outcome: Outcome | None = None
    timings: StoryTimings = field(default_factory=StoryTimings)
    _stream: Iterator[PaintedSegment] | None = None
    _iterated: bool = False

    def __iter__(self) -> Iterator[PaintedSegment]:
        if self._iterated:
            raise RuntimeError("a story can be iterated once (wait() writes what is left)")
        self._iterated = True
        return self._stream

    def wait(self) -> WrittenStory:
        """Write to the end (what an iteration left, or all of it) and wait for every picture."""
        for _ in self._stream:
            pass
        self.images()
        return self

    def images(self) -> list[Image.Image]:
        return [segment.image.result() for segment in self.segments]


@dataclass
class WrittenSegment:
    """A segment as the writer hands it over: its text and the features of the picture to paint."""

    index: int
    text: str
    features: torch.Tensor
    stats: SegmentStats


def request_settings(story: StoryConfig, segments: int | None = None, seed: int | None = None) -> StoryConfig:
    """``story`` with a request's segment count and seed (``story``'s when not given). It needs no model, so
    a command line can refuse a bad request before it loads one."""
    if segments is not None and segments < 1:
        raise StoryInputError(f"segments: must be at least 1, got {segments}")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise StoryInputError(f"seed: must be in [0, {SEED_LIMIT}), got {seed}")
    return story.model_copy(update={"segments": story.segments if segments is None else segments,
                                    "seed": story.seed if seed is None else seed})


class StoryWriter:
    """The MLLM half of a story, without painting: an opening in, written segments out.

    Serving runs it in the writer deployment and paints elsewhere; ``StoryPipeline`` pairs it with
    a painting thread in one process.
    """

    def __init__(self, mllm: SeedStoryMLLM, tokenizer: PreTrainedTokenizerBase, vit: VisionTransformer,
                 config: SeedStoryConfig) -> None:
        self.mllm = mllm
        self.tokenizer = tokenizer
        self.vit = vit
        self.config = config
        self.separator_ids = tokenizer.encode(INST, add_special_tokens=False)

    def settings(self, segments: int | None = None, seed: int | None = None) -> StoryConfig:
        return request_settings(self.config.story, segments, seed)

    def opening(self, text: str, image: Image.Image | None) -> StoryStart:
        """BOS + the sentence, and the image's ViT features, as training's first frame."""
        if not text or not text.strip():
            raise StoryInputError("text: empty; a story opens with a sentence")
        ids = [self.tokenizer.bos_token_id, *self.tokenizer.encode(text.strip(), add_special_tokens=False)]
        if len(ids) > self.config.data.max_length // 2:
            raise StoryInputError(f"text: {len(ids)} tokens, more than half the model's context "
                                  f"({self.config.data.max_length} tokens)")
        if image is None:
            return StoryStart(token_ids=ids)
        size = self.vit.config.image_size
        pixels = torch.from_numpy(vit_pixels(image, size))[None].to(next(self.vit.parameters()).device)
        with torch.no_grad():
            features = self.vit(pixels)[0]
        return StoryStart(token_ids=ids, image_features=features)

    def write(self, start: StoryStart, settings: StoryConfig) -> tuple[Story, Iterator[WrittenSegment]]:
        """The story loop (its ``outcome`` is set once the iterator ends) and its segments as text."""
        generator = StoryGenerator(self.mllm, settings, settings.cache,
                                   eos_id=self.tokenizer.eos_token_id, separator_ids=self.separator_ids)
        loop = generator.generate(start)
        segments = (WrittenSegment(index=s.index, features=s.features, stats=s.stats, text=self.text(s.text_ids))
                    for s in loop)
        return loop, segments

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def engine(self, max_stories: int) -> StoryEngine:
        """A continuous-batching engine for up to ``max_stories`` stories with this writer's model and cache."""
        if self.config.story.context != "cache":
            raise ValueError(f"story.context is {self.config.story.context!r}, which re-encodes the context of one "
                             "story at a time: a batched writer needs story.context=cache")
        return StoryEngine(self.mllm, self.config.story.cache, max_stories=max_stories,
                           eos_id=self.tokenizer.eos_token_id, separator_ids=self.separator_ids)


class StoryPipeline:
    def __init__(self, models: StoryModels, config: SeedStoryConfig) -> None:
        self.models = models
        self.config = config
        self.writer = StoryWriter(models.mllm, models.tokenizer, models.vit, config)

    def opening(self, text: str, image: Image.Image | None) -> StoryStart:
        return self.writer.opening(text, image)

    def write(self, text: str, image: Image.Image | None = None, segments: int | None = None,
              seed: int | None = None) -> WrittenStory:
        """A story of ``segments`` segments (default ``story.segments``) after the opening."""
        story_config = self.writer.settings(segments, seed)
        start = self.opening(text, image)
        story = WrittenStory(opening=text.strip(), opening_image=image, settings=story_config)
        story._stream = self._stream(story, start)
        return story

    def storybook(self, story: WrittenStory) -> Storybook:
        """The finished story (every picture painted) with what made it: model versions and settings."""
        images = story.wait().images()
        return Storybook(opening=story.opening, opening_image=story.opening_image,
                         texts=[s.text for s in story.segments], images=images, outcome=story.outcome.value,
                         models=self.models.versions(), config=story_settings(self.config, story.settings),
                         stats={**story.timings.as_dict(), "segments": len(story.segments)})

    def _stream(self, story: WrittenStory, start: StoryStart) -> Iterator[PaintedSegment]:
        painter = Painter(self.models.detokenizer, story.settings.seed, self.config.model.scheduler)
        began = time.perf_counter()
        loop, segments = self.writer.write(start, story.settings)
        try:
            while True:
                step = time.perf_counter()
                segment = next(segments, None)
                story.timings.write_s += time.perf_counter() - step
                if segment is None:
                    break
                painted = PaintedSegment(index=segment.index, text=segment.text, features=segment.features,
                                         stats=segment.stats, image=painter.submit(segment.features, segment.index))
                story.segments.append(painted)
                yield painted
        finally:
            painter.close()
            story.outcome = loop.outcome
            story.timings.paint_s = painter.busy_s
            story.timings.wall_s = time.perf_counter() - began


def story_settings(config: SeedStoryConfig, settings: StoryConfig) -> dict[str, Any]:
    """What a story.json records of how it was made: the loop's settings and the painting scheduler."""
    return {"story": settings.model_dump(mode="json"), "scheduler": config.model.scheduler.model_dump(mode="json")}
