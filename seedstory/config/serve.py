"""The Ray Serve application: two independently scaled deployments."""

from typing import Literal

from pydantic import Field

from seedstory.config.base import Section


class DeploymentConfig(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    cpus: float = Field(0.5, gt=0)
    gpus: float = Field(0.0, ge=0)


class AttentionSinkConfig(Section):
    """The KV cache of the story loop (DESIGN.md, multimodal attention sink)."""

    mode: Literal["dense", "window", "sink", "mm-sink"] = "mm-sink"
    sink_tokens: int = Field(4, ge=0)
    window: int = Field(1024, ge=1)
    boi_before: int = Field(0, ge=0)
    boi_after: int = Field(5, ge=0)
    eoi_before: int = Field(8, ge=0)
    eoi_after: int = Field(0, ge=0)
    max_anchored_images: int = Field(8, ge=0)
    positions: Literal["absolute", "rerotate"] = "absolute"


class ServeConfig(Section):
    generator: DeploymentConfig = Field(default_factory=DeploymentConfig)
    decoder: DeploymentConfig = Field(default_factory=DeploymentConfig)
    cache: AttentionSinkConfig = Field(default_factory=AttentionSinkConfig)
    max_segments: int = Field(50, ge=1)
    max_tokens_per_segment: int = Field(128, ge=1)
