"""Per-stage training settings (defaults after the paper's appendix C)."""

from typing import Literal

from pydantic import Field

from seedstory.config.base import Section


class StageConfig(Section):
    """One training stage as a Ray Train + DeepSpeed run."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    bf16: bool = True
    micro_batch_size: int = Field(1, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    max_steps: int = Field(100, ge=1)
    val_every: int | None = Field(
        None, ge=1, description="evaluate on the val split (data.val_jsonl) every this many steps and at "
        "max_steps, logged as val/<loss term>; null: no validation",
    )
    val_batches: int | None = Field(
        None, ge=1, description="micro-batches per worker in each evaluation, the first of the val split "
        "(fixed windows, fixed order); null: the whole val split",
    )
    stop_at_step: int | None = Field(
        None, ge=1, description="end this submission after this step; the schedule still spans max_steps "
        "and re-submitting the same run name continues (time-boxed or preemptible clusters)",
    )
    activation_checkpointing: bool = Field(
        False, description="recompute the trained network's activations in the backward pass instead of keeping "
        "them: the UNet's blocks (de-tokenizer stages) or the LLM's decoder layers (story instruction tuning); "
        "less memory for about a third more compute",
    )
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.03, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how the workers' placement group spreads over nodes; STRICT_SPREAD: one worker per node",
    )
    registered_model: str
    sources: dict[str, str] = Field(
        default_factory=dict, description="what the stage starts from, by name (e.g. mllm, detokenizer): a URI "
        "of an export or an MLflow model reference models:/<name>@<alias> or models:/<name>/<version>",
    )


class TrainConfig(Section):
    """The three training stages of the paper, each with its own settings."""

    run_name: str | None = Field(
        None, description="names each stage's Ray Train run <run_name>-<stage>; re-submitting with the same "
        "name resumes from its latest checkpoint (default: a fresh name per submission)",
    )
    base_weights: str | None = Field(
        None, description="folder written by jobs/pretrain_bases.py or jobs/init_base_weights.py (vit.safetensors, text_encoder/, llm/, "
        "tokenizer/, vae/, unet/, base.json last); fills every model.*.weights and model.llm.tokenizer left null",
    )
    vae_pretrain: StageConfig = Field(
        default_factory=lambda: StageConfig(registered_model="seedstory-base-vae"),
        description="the tiny preset's VAE base, pretrained as an autoencoder (jobs/pretrain_bases.py)",
    )
    clip_pretrain: StageConfig = Field(
        default_factory=lambda: StageConfig(registered_model="seedstory-base-clip"),
        description="the tiny preset's ViT base, pretrained with a text tower as a CLIP (jobs/pretrain_bases.py)",
    )
    llm_pretrain: StageConfig = Field(
        default_factory=lambda: StageConfig(registered_model="seedstory-base-llm"),
        description="the tiny preset's LLM base, pretrained on the toy world's stories as text (jobs/pretrain_bases.py)",
    )
    detokenizer_pretrain: StageConfig = Field(
        default_factory=lambda: StageConfig(registered_model="seedstory-detokenizer")
    )
    story_instruct: StageConfig = Field(default_factory=lambda: StageConfig(registered_model="seedstory-mllm"))
    detokenizer_adapt: StageConfig = Field(
        default_factory=lambda: StageConfig(
            registered_model="seedstory-adapted-detokenizer", zero_stage=3,
            sources={"mllm": "models:/seedstory-mllm@candidate", "detokenizer": "models:/seedstory-detokenizer@candidate"},
        )
    )
