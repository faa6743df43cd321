"""The Ray Serve application: an ingress, the writer (MLLM) and the painter (de-tokenizer).

The writer is memory-bandwidth bound and holds one cache per story; the painter is compute bound
and batches. Each has its own replicas, autoscaling and resources, so one can scale while the
other stays at its minimum.
"""

from pydantic import Field, model_validator

from seedstory.config.base import Section


ROLE_LABEL = "seedstory.io/role"


class DeploymentConfig(Section):
    """One deployment's scale (Ray Serve's ``autoscaling_config``) and its replica's resources."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_ongoing_requests: int = Field(4, ge=1)
    max_queued_requests: int = Field(-1, ge=-1, description="per caller; -1 is unbounded, a full queue answers 503")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After of that 503")
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)
    graceful_shutdown_timeout_s: float = Field(
        300.0, gt=0, description="how long a replica Serve stops (scaling down, a re-deploy that restarts it) "
        "may finish what it holds before it is killed: the writer's and the ingress's requests are whole stories",
    )
    cpus: float = Field(0.5, gt=0)
    gpus: float = Field(0.0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    label_selector: dict[str, str] = Field(
        default_factory=dict, description="Ray node labels a replica's node must match (Ray's label selector "
        "syntax: 'value', '!value', 'in(a,b)', '!in(a,b)'); a node without the label matches a negation",
    )

    @model_validator(mode="after")
    def _replica_range(self) -> "DeploymentConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


# A node labelled for one role never hosts the other role's replicas, so each role's node group
# scales on its own; an unlabelled node (the local stack's) hosts both.
class WriterConfig(DeploymentConfig):
    """The writer batches the stories in flight on a replica, one attention-sink cache row each."""

    label_selector: dict[str, str] = Field(default_factory=lambda: {ROLE_LABEL: "!painter"})
    # Bounded, so that a story Serve cannot start soon is told so (503, Retry-After) instead of waiting
    # unanswered: 32 and the rows being written stay under the 64 streams an ingress replica holds, so
    # the refusal comes before the ingress stops answering. The painter's callers are stories already
    # under way, and stay unbounded.
    max_queued_requests: int = Field(32, ge=-1, description="per caller (each ingress replica); -1 is unbounded")
    max_stories: int | None = Field(
        None, ge=1, description="stories a replica writes in one batch (its cache rows, allocated at start); "
        "default max_ongoing_requests, so every request a replica accepts writes at once",
    )

    @model_validator(mode="after")
    def _rows_can_fill(self) -> "WriterConfig":
        if self.max_stories is not None and self.max_stories > self.max_ongoing_requests:
            raise ValueError(f"max_stories ({self.max_stories}) exceeds max_ongoing_requests "
                             f"({self.max_ongoing_requests}): rows no request could fill")
        return self

    @property
    def batch(self) -> int:
        return self.max_stories or self.max_ongoing_requests


class PainterConfig(DeploymentConfig):
    """The painter batches feature tensors from every story in flight (``@serve.batch``)."""

    label_selector: dict[str, str] = Field(default_factory=lambda: {ROLE_LABEL: "!writer"})

    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)
    retries: int = Field(2, ge=0, description="further replicas an image is tried on when its replica dies")


class ServeConfig(Section):
    """Deployments, the models they load and the HTTP API's limits.

    ``alias`` is the registry alias the writer and painter load (``user_config``: changing it and
    re-deploying reloads the models without dropping the service). The API token, when wanted,
    lives in the environment variable ``api_token_env`` of the ingress replicas (a Kubernetes
    Secret, say), never in a config file.
    """

    alias: str = "candidate"
    ingress: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(
        cpus=0.1, max_ongoing_requests=64, target_ongoing_requests=32))
    writer: WriterConfig = Field(default_factory=WriterConfig)
    painter: PainterConfig = Field(default_factory=PainterConfig)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    stories: str = Field("stories", description="where finished stories are saved, under storage's root")
    max_segments: int = Field(16, ge=1)
    max_text_chars: int = Field(500, ge=1)
    max_image_bytes: int = Field(4 * 2**20, ge=1)
    max_image_side: int = Field(4096, ge=1)
    max_body_bytes: int = Field(8 * 2**20, ge=1)
    api_token_env: str = "SEEDSTORY_API_TOKEN"
