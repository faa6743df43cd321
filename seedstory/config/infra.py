"""Where a run stores data, tracks experiments, and how the embedded local stack listens."""

from pathlib import Path

from pydantic import Field, field_validator

from seedstory.config.base import Section


class StorageConfig(Section):
    """Object storage. Endpoint and credentials come from the environment, never from YAML."""

    bucket: str = "seedstory"
    prefix: str = ""

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not value or "/" in value or value != value.lower():
            raise ValueError(f"not a valid bucket name: {value!r}")
        return value

    @property
    def root_uri(self) -> str:
        base = f"s3://{self.bucket}"
        return f"{base}/{self.prefix.strip('/')}" if self.prefix.strip("/") else base

    def uri(self, *parts: str) -> str:
        """An object-store URI under the project root: ``uri("toy", "train.jsonl")``."""
        return "/".join([self.root_uri, *(p.strip("/") for p in parts if p.strip("/"))])


class TrackingConfig(Section):
    """MLflow. ``tracking_uri: null`` means: take MLFLOW_TRACKING_URI from the environment."""

    tracking_uri: str | None = None
    experiment: str = "seedstory"


class StackConfig(Section):
    """The embedded local stack (SeaweedFS S3, MLflow server, Ray head) on one machine."""

    state_dir: Path = Path(".stack")
    host: str = "127.0.0.1"
    s3_port: int = Field(9400, ge=1, le=65535)
    # SeaweedFS's own servers (master, volume, filer, admin, and the gRPC twins of these and of
    # the S3 gateway) take the nine ports from here.
    s3_internal_ports_from: int = Field(9410, ge=1, le=65535 - 8)
    mlflow_port: int = Field(5400, ge=1, le=65535)
    ray_gcs_port: int = Field(6379, ge=1, le=65535)
    ray_dashboard_port: int = Field(8265, ge=1, le=65535)
    ray_client_port: int = Field(10001, ge=1, le=65535)
    ray_agent_port: int = Field(52365, ge=1, le=65535)
    ray_object_store_mb: int = Field(2048, ge=78)
    ray_num_cpus: int | None = Field(None, ge=1)
    start_timeout_s: float = Field(90.0, gt=0)
