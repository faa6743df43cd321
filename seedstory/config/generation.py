"""How the story loop generates: the KV cache and the segment budget."""

from typing import Literal

from pydantic import Field, model_validator

from seedstory.config.base import Section

SEED_LIMIT = 2**32  # story seeds are below it, so each picture's painting seed fits torch's 64-bit generator


class AttentionSinkConfig(Section):
    """The KV cache of the story loop (the multimodal attention sink and its alternatives).

    Anchor defaults follow the paper's appendix D (Table 5): BOI..IMG04 and IMG56..IMG63, EOI
    receive the attention, i.e. [BOI, BOI+5] and [EOI-8, EOI].
    """

    mode: Literal["dense", "window", "sink", "mm-sink"] = "mm-sink"
    sink_tokens: int = Field(4, ge=0)
    window: int = Field(1024, ge=1)
    boi_before: int = Field(0, ge=0)
    boi_after: int = Field(5, ge=0)
    eoi_before: int = Field(8, ge=0)
    eoi_after: int = Field(0, ge=0)
    max_anchored_images: int = Field(8, ge=0)
    positions: Literal["absolute", "rerotate"] = "absolute"
    dense_capacity: int = Field(
        8192, ge=1, description="tokens a dense-mode story may hold when stories share a batch: its rows are "
        "allocated up front, so a story whose longest possible length exceeds this is refused",
    )

    @model_validator(mode="after")
    def _anchor_reachable(self) -> "AttentionSinkConfig":
        if self.boi_before > self.window:
            raise ValueError(
                f"boi_before ({self.boi_before}) must not exceed window ({self.window}): tokens before a BOI "
                "would leave the window before the image is declared, so they could never be anchored"
            )
        return self


class StoryConfig(Section):
    """The interleaved story loop: how many segments, how text is sampled, what bounds a segment.

    A model that never emits BOI must not loop forever: after ``max_text_tokens`` text tokens in
    one segment the loop either forces BOI (``on_text_budget: force-image``) or stops the story
    with the outcome ``text-budget-exhausted`` (``stop``).
    """

    segments: int = Field(10, ge=1)
    max_text_tokens: int = Field(64, ge=1)
    on_text_budget: Literal["force-image", "stop"] = "stop"
    sampling: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    context: Literal["cache", "recompute-window"] = "cache"
    recompute_segments: int = Field(10, ge=1)
    cache: AttentionSinkConfig = Field(default_factory=AttentionSinkConfig)

    @model_validator(mode="after")
    def _sampling_knobs_need_sampling(self) -> "StoryConfig":
        if self.sampling == "greedy" and (self.temperature != 1.0 or self.top_k != 0):
            raise ValueError("temperature/top_k only apply with sampling: sample")
        return self
