"""The application: the ingress composed with the writer and the painter, each scaled on its own.

``app`` is what ``serve build seedstory.serving.app:app`` reads (the ``demo`` preset's scale;
``serve/config.yaml`` is its output); ``build_app`` builds the same for any config, for
``serve.run``. Deployment options written into a deploy config take precedence over these, as
Ray Serve does: that file is where an operator changes scale and resources.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.deployment import Deployment

from seedstory.config.serve import DeploymentConfig
from seedstory.serving.ingress import Ingress
from seedstory.serving.painter import Painter
from seedstory.serving.selection import ModelSelection
from seedstory.serving.writer import Writer


def deployment_options(scale: DeploymentConfig, user_config: dict[str, Any]) -> dict[str, Any]:
    """A ``serve`` config section as Ray Serve's deployment options."""
    actor: dict[str, Any] = {"num_cpus": scale.cpus, "num_gpus": scale.gpus}
    if scale.memory_gb is not None:
        actor["memory"] = int(scale.memory_gb * 2**30)
    if scale.label_selector:
        actor["label_selector"] = dict(scale.label_selector)
    return {
        "user_config": user_config,
        "max_ongoing_requests": scale.max_ongoing_requests,
        "max_queued_requests": scale.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": scale.retry_after_s},
        "graceful_shutdown_timeout_s": scale.graceful_shutdown_timeout_s,
        "ray_actor_options": actor,
        "autoscaling_config": {
            "min_replicas": scale.min_replicas,
            "max_replicas": scale.max_replicas,
            "target_ongoing_requests": scale.target_ongoing_requests,
            "upscale_delay_s": scale.upscale_delay_s,
            "downscale_delay_s": scale.downscale_delay_s,
        },
    }


def build_app(config: str = "demo", overrides: list[str] | None = None, alias: str | None = None) -> Application:
    selection = ModelSelection(config=config, overrides=list(overrides or []), alias=alias)
    scale = selection.load().serve
    user_config = selection.model_dump()

    def bind(deployment: Deployment, options: DeploymentConfig, *args: Any) -> Application:
        return deployment.options(**deployment_options(options, user_config)).bind(*args)

    writer = bind(Writer, scale.writer)
    painter = bind(Painter, scale.painter)
    return bind(Ingress, scale.ingress, writer, painter)


app = build_app()
