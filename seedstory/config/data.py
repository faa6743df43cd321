"""Where the StoryStream data lives and how stage samples are cut from it."""

from typing import Literal

from pydantic import Field, model_validator

from seedstory.config.base import Section


class ToyWorldConfig(Section):
    """The synthetic toy world written in the released StoryStream format (seedstory.data.toyworld)."""

    stories: int = Field(64, ge=1)
    max_frames: int = Field(30, ge=2, le=30)
    min_frames: int = Field(10, ge=2, le=30)
    image_size: int = Field(64, ge=32)
    image_format: Literal["jpg", "png"] = "jpg"
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    uri: str = "s3://seedstory/toyworld"
    text_stories: int = Field(
        0, ge=0, description="more training stories written as text only (``text.jsonl``: id and captions), the "
        "world's text corpus: stories past ``stories`` that the split rule deals to train, never a val or test "
        "one; read by the LLM base's pretraining through data.text_jsonl, as a real LLM reads far more text "
        "than the stories it is tuned on",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "ToyWorldConfig":
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) must not exceed max_frames ({self.max_frames})")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave some stories for training")
        return self


class DataConfig(Section):
    """StoryStream as released (JSON Lines, one story per line, globs allowed, plus an image root) or as
    prepared by jobs/prepare_data.py (``prepared``)."""

    train_jsonl: list[str] = Field(default_factory=lambda: ["s3://seedstory/toyworld/train.jsonl"])
    val_jsonl: list[str] = Field(default_factory=lambda: ["s3://seedstory/toyworld/val.jsonl"])
    test_jsonl: list[str] = Field(default_factory=lambda: ["s3://seedstory/toyworld/test.jsonl"])
    image_root: str = "s3://seedstory/toyworld/images"
    prepared: str | None = Field(
        None, description="a dataset written by jobs/prepare_data.py (sharded Parquet, frames at the preset's "
        "sizes): when set, the training stages read their samples from it instead of the JSONL files and image root "
        "(the LLM base's texts and the validation captions still come from the JSONL files)",
    )
    window_frames: int = Field(10, ge=2, le=30)
    min_context_frames: int = Field(1, ge=0)
    max_length: int = Field(1024, ge=16)
    text_jsonl: list[str] = Field(
        default_factory=list, description="more stories as text (a JSON object with a 'captions' list per line, "
        "pictures unread), added to the train split's for the LLM base's pretraining and read by nothing else",
    )
    text_max_length: int | None = Field(
        None, ge=16, description="the first tokens of each story the LLM base is pretrained on (unset: max_length); "
        "its val scores read stories up to max_length",
    )
    failure_budget: float = Field(0.01, ge=0, le=1)
    seed: int = 0
    shuffle_buffer: int = Field(
        64, ge=0, description="samples each worker training a tiny base holds to draw its batches at random "
        "from (Ray Data local shuffle buffer; 0: stream order); the story stages shuffle by story order and "
        "within each group of preprocess_batch_size stories instead, so that a resume is exact",
    )
    length_groups: int = Field(
        3, ge=1, description="micro-batches of the LLM base's stories drawn from the shuffle buffer together, cut "
        "in order of length and read in a random order, so that each pads less (1: batches as drawn)",
    )
    decode_concurrency: int | None = Field(
        None, ge=1, description="actors that fetch, decode and cut samples for each Ray Data execution of a training "
        "worker's stream (at most two run at a time: the one read and, from its second half on, the next); unset: Ray "
        "Data grows each pool from one actor to its share of the CPUs the training workers leave free",
    )
    actor_cpus: float = Field(0.25, gt=0)
    preprocess_batch_size: int = Field(
        8, ge=1, description="stories fetched, decoded and cut together (one map batch); their samples are "
        "interleaved at random, so a training micro-batch mixes up to this many stories",
    )
    stream_object_store_fraction: float = Field(
        0.25, gt=0, le=1, description="the share of the cluster's object store that a story stage's decoded "
        "samples may fill ahead of training, all workers together; each worker's stream runs as a chain of Ray "
        "Data executions that fit in its part (a stream that outgrows it keeps Ray Data's scheduler polling in "
        "a busy loop that takes CPU from training)",
    )
    toy: ToyWorldConfig = Field(default_factory=ToyWorldConfig)

    @model_validator(mode="after")
    def _context_fits(self) -> "DataConfig":
        if self.min_context_frames >= self.window_frames:
            raise ValueError(f"min_context_frames ({self.min_context_frames}) must be below window_frames "
                             f"({self.window_frames}): a window needs a target frame")
        return self
