"""How a candidate model is evaluated: the image feature extractor, the CLIP pair, the LLM judge."""

from typing import Literal

from pydantic import Field

from seedstory.config.base import Section

ASPECTS = ("style", "engagement", "coherence")


class JudgeConfig(Section):
    """An OpenAI-compatible chat endpoint that judges stories with the paper's prompts.

    The key is read from the environment variable ``api_key_env`` at request time and never
    logged; an endpoint without authentication (a local server) leaves it unset.
    """

    base_url: str = Field(description="endpoint root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    aspects: list[Literal["style", "engagement", "coherence"]] = Field(default_factory=lambda: list(ASPECTS))
    max_images: int = Field(10, ge=1, description="images per request (GPT-4V took 10: 5 segments per story "
                                                  "in a pairwise request)")
    max_tokens: int = Field(512, ge=1)
    retries: int = Field(4, ge=0, description="retries after a 429 or 5xx, with exponential backoff")
    backoff_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(120.0, gt=0)
    stories: int = Field(16, ge=1, description="stories judged per model (each costs 2 requests per pairwise "
                                              "aspect and 1 per scored aspect)")


class EvalConfig(Section):
    """``extractor`` embeds images for FID and KID; ``clip`` embeds text and images for CLIP score.

    ``toy`` is the toy world's dual encoder from ``train.base_weights`` (the tiny presets' default);
    ``inception`` is FID's InceptionV3 from the local file ``inception_weights``; ``clip`` is a
    local transformers CLIP folder ``clip_model``. Nothing is ever downloaded; a missing file is an
    error when the evaluation starts, so a preset can name the extractor before the weights exist.
    """

    extractor: Literal["toy", "inception", "clip"] = "toy"
    clip: Literal["toy", "clip"] = "toy"
    inception_weights: str | None = None
    clip_model: str | None = None
    stories: int = Field(32, ge=1, description="test-split stories whose openings are continued")
    segments: int = Field(10, ge=1, description="segments generated after each opening")
    kid_subset_size: int = Field(100, ge=2, description="KID's subset size (capped at the smallest set)")
    kid_subsets: int = Field(50, ge=1)
    seed: int = 0
    toy_judge: bool = Field(True, description="score with the toy world's exact judge (only toy-world data)")
    judge: JudgeConfig | None = None
