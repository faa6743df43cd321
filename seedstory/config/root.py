"""The one configuration model of the project, composed of its sections."""

from pydantic import Field

from seedstory.config.base import Section
from seedstory.config.data import DataConfig
from seedstory.config.evaluation import EvalConfig
from seedstory.config.generation import StoryConfig
from seedstory.config.infra import StackConfig, StorageConfig, TrackingConfig
from seedstory.config.model import ModelConfig
from seedstory.config.serve import ServeConfig
from seedstory.config.train import TrainConfig


class SeedStoryConfig(Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    stack: StackConfig = Field(default_factory=StackConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    story: StoryConfig = Field(default_factory=StoryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
