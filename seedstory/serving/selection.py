"""What a deployment serves: the ``user_config`` every deployment of the application shares.

It names a config (preset or YAML path, with overrides) and the registry alias of the models.
Ray Serve hands it to ``reconfigure`` at start and on every re-deploy that changes it, so moving
the alias reloads the models while the replicas keep serving.
"""

from __future__ import annotations

import ray
import torch
from pydantic import Field

from seedstory.config import SeedStoryConfig, load_config
from seedstory.config.base import Section
from seedstory.generation.pipeline import model_references, resolve_models
from seedstory.training.registry import ResolvedSource


class ModelSelection(Section):
    config: str = "demo"
    overrides: list[str] = Field(default_factory=list)
    alias: str | None = Field(None, description="the registry alias to load; serve.alias of the config when null")

    def load(self) -> SeedStoryConfig:
        return load_config(self.config, self.overrides)

    def resolve(self, config: SeedStoryConfig) -> dict[str, ResolvedSource]:
        """The MLLM and de-tokenizer versions the alias points at now."""
        return resolve_models(config, model_references(config, self.alias or config.serve.alias))


def replica_device(role: str) -> torch.device:
    """Where this replica's models run: the GPU Ray assigned it (its deployment's ``num_gpus``, from
    ``serve.<role>.gpus`` or the deploy config), else the CPU. A replica holding a GPU it cannot use
    fails at start rather than paint on the CPU."""
    assigned = ray.get_gpu_ids()
    if not assigned:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"Ray assigned this {role} replica GPU {assigned}, but torch sees no CUDA device "
                           f"(torch {torch.__version__})")
    return torch.device("cuda")
