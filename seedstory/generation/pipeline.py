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

import numpy as np
import torch
from mlflow import MlflowClient
from peft import PeftModel
from PIL import Image
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.config.generation import StoryConfig
from seedstory.data.badrecords import BadRecordError
from seedstory.data.images import decode_image
from seedstory.data.pixels import vit_pixels
from seedstory.generation.story import Outcome, SegmentStats, StoryGenerator, StoryStart
from seedstory.generation.storybook import Storybook
from seedstory.models.detokenizer import Detokenizer
from seedstory.models.export import export_model_config, load_detokenizer, load_mllm
from seedstory.models.lora import merge_lora
from seedstory.models.mllm import SeedStoryMLLM
from seedstory.models.vit import VisionTransformer, build_vit
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
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise StoryInputError(f"image: cannot read {uri}: {err.strerror or err}") from None
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
        mllm_uri = sources["mllm"].uri
        mllm, tokenizer = load_mllm(mllm_uri)
        if tokenizer is None:
            raise WeightsError(f"{mllm_uri}: the MLLM export holds no tokenizer/, so its text cannot be read")
        if isinstance(mllm.llm, PeftModel):
            merge_lora(mllm)
        vit_config = export_model_config(mllm_uri, "mllm")
        if vit_config.vit.weights is None:
            raise WeightsError(f"{mllm_uri}: the export names no ViT weights (model.vit.weights is null)")
        return cls(mllm=mllm.eval(), tokenizer=tokenizer, vit=build_vit(vit_config),
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


class Painter:
    """One worker thread that turns features into pictures, each with its own seeded noise."""

    def __init__(self, detokenizer: Detokenizer, seed: int) -> None:
        self.detokenizer = detokenizer
        self.seed = seed
        self.busy_s = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="painter")

    def submit(self, features: torch.Tensor, index: int) -> Future[Image.Image]:
        return self._pool.submit(self._paint, features, index)

    @torch.no_grad()
    def _paint(self, features: torch.Tensor, index: int) -> Image.Image:
        began = time.perf_counter()
        generator = torch.Generator(device=features.device).manual_seed(self.seed * 1_000_003 + index)
        pixels = self.detokenizer.decode(features[None], generator=generator)[0]
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

    def __iter__(self) -> Iterator[PaintedSegment]:
        if self._stream is None:
            raise RuntimeError("a story can be iterated once")
        stream, self._stream = self._stream, None
        return stream

    def wait(self) -> WrittenStory:
        """Write to the end (if not iterated yet) and wait for every picture."""
        if self._stream is not None:
            for _ in self:
                pass
        self.images()
        return self

    def images(self) -> list[Image.Image]:
        return [segment.image.result() for segment in self.segments]


class StoryPipeline:
    def __init__(self, models: StoryModels, config: SeedStoryConfig) -> None:
        self.models = models
        self.config = config
        self.separator_ids = models.tokenizer.encode(INST, add_special_tokens=False)

    def opening(self, text: str, image: Image.Image | None) -> StoryStart:
        """BOS + the sentence, and the image's ViT features, as training's first frame."""
        if not text or not text.strip():
            raise StoryInputError("text: empty; a story opens with a sentence")
        ids = [self.models.tokenizer.bos_token_id, *self.models.tokenizer.encode(text.strip(), add_special_tokens=False)]
        if len(ids) > self.config.data.max_length // 2:
            raise StoryInputError(f"text: {len(ids)} tokens, more than half the model's context "
                                  f"({self.config.data.max_length} tokens)")
        if image is None:
            return StoryStart(token_ids=ids)
        size = self.models.vit.config.image_size
        pixels = torch.from_numpy(vit_pixels(image, size))[None]
        with torch.no_grad():
            features = self.models.vit(pixels)[0]
        return StoryStart(token_ids=ids, image_features=features)

    def write(self, text: str, image: Image.Image | None = None, segments: int | None = None,
              seed: int | None = None) -> WrittenStory:
        """A story of ``segments`` segments (default ``story.segments``) after the opening."""
        if segments is not None and segments < 1:
            raise StoryInputError(f"segments: must be at least 1, got {segments}")
        story_config = self.config.story.model_copy(update={
            "segments": segments or self.config.story.segments,
            "seed": self.config.story.seed if seed is None else seed})
        start = self.opening(text, image)
        story = WrittenStory(opening=text.strip(), opening_image=image, settings=story_config)
        story._stream = self._stream(story, start)
        return story

    def storybook(self, story: WrittenStory) -> Storybook:
        """The finished story (every picture painted) with what made it: model versions and settings."""
        images = story.wait().images()
        config = {"story": story.settings.model_dump(mode="json"),
                  "scheduler": self.config.model.scheduler.model_dump(mode="json")}
        return Storybook(opening=story.opening, opening_image=story.opening_image,
                         texts=[s.text for s in story.segments], images=images, outcome=story.outcome.value,
                         models=self.models.versions(), config=config,
                         stats={**story.timings.as_dict(), "segments": len(story.segments)})

    def _stream(self, story: WrittenStory, start: StoryStart) -> Iterator[PaintedSegment]:
        settings = story.settings
        generator = StoryGenerator(self.models.mllm, settings, settings.cache,
                                   eos_id=self.models.tokenizer.eos_token_id, separator_ids=self.separator_ids)
        painter = Painter(self.models.detokenizer, settings.seed)
        began = time.perf_counter()
        loop = generator.generate(start)
        segments = iter(loop)
        try:
            while True:
                step = time.perf_counter()
                segment = next(segments, None)
                story.timings.write_s += time.perf_counter() - step
                if segment is None:
                    break
                painted = PaintedSegment(
                    index=segment.index, features=segment.features, stats=segment.stats,
                    text=self.models.tokenizer.decode(segment.text_ids, skip_special_tokens=True).strip(),
                    image=painter.submit(segment.features, segment.index))
                story.segments.append(painted)
                yield painted
        finally:
            painter.close()
            story.outcome = loop.outcome
            story.timings.paint_s = painter.busy_s
            story.timings.wall_s = time.perf_counter() - began
