"""Where the StoryStream data lives and how stage samples are cut from it."""

from pydantic import Field

from seedstory.config.base import Section


class ToyWorldConfig(Section):
    """The synthetic toy world written in the released StoryStream format."""

    stories: int = Field(64, ge=1)
    max_frames: int = Field(30, ge=1, le=30)
    min_frames: int = Field(10, ge=1, le=30)
    image_size: int = Field(64, ge=16)
    seed: int = 0
    uri: str = "s3://seedstory/toyworld"


class DataConfig(Section):
    """StoryStream as released: JSON Lines (one story per line) plus an image root."""

    train_jsonl: list[str] = Field(default_factory=lambda: ["s3://seedstory/toyworld/train.jsonl"])
    val_jsonl: list[str] = Field(default_factory=lambda: ["s3://seedstory/toyworld/val.jsonl"])
    image_root: str = "s3://seedstory/toyworld/images"
    window_frames: int = Field(10, ge=2, le=30)
    max_length: int = Field(1024, ge=16)
    failure_budget: float = Field(0.01, ge=0, le=1)
    seed: int = 0
    toy: ToyWorldConfig = Field(default_factory=ToyWorldConfig)
