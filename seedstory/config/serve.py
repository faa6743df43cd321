"""The Ray Serve application: two independently scaled deployments."""

from pydantic import Field

from seedstory.config.base import Section


class DeploymentConfig(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    cpus: float = Field(0.5, gt=0)
    gpus: float = Field(0.0, ge=0)


class ServeConfig(Section):
    generator: DeploymentConfig = Field(default_factory=DeploymentConfig)
    decoder: DeploymentConfig = Field(default_factory=DeploymentConfig)
