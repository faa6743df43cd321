"""Model shapes. The ``tiny`` and ``paper`` presets in ``seedstory/configs`` fill these in."""

from typing import Literal

from pydantic import Field

from seedstory.config.base import Section


class ViTConfig(Section):
    """Visual tokenizer (Qwen-VL ViT-G shape in the paper preset)."""

    image_size: int = Field(448, ge=14)
    patch_size: int = Field(14, ge=1)
    width: int = Field(1664, ge=8)
    layers: int = Field(48, ge=1)
    heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.9231, gt=0)
    num_queries: int = Field(256, ge=1)
    output_dim: int = Field(4096, ge=8)
    weights: str | None = None


class ResamplerConfig(Section):
    """A Q-Former-style resampler: learned queries cross-attending a token sequence."""

    num_queries: int = Field(64, ge=1)
    heads: int = Field(32, ge=1)
    layers: int = Field(1, ge=1)


class LLMConfig(Section):
    """A LLaMA-style decoder (LLaMA-2-7B in the paper preset)."""

    hidden_size: int = Field(4096, ge=8)
    intermediate_size: int = Field(11008, ge=8)
    num_layers: int = Field(32, ge=1)
    num_heads: int = Field(32, ge=1)
    num_kv_heads: int = Field(32, ge=1)
    vocab_size: int = Field(32000, ge=8)
    max_position_embeddings: int = Field(4096, ge=16)
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    weights: str | None = None
    tokenizer: str | None = None


class LoRAConfig(Section):
    """peft LoRA. Paper appendix C.2: r=6, alpha=32 on the seven projections."""

    r: int = Field(6, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class UNetConfig(Section):
    """A diffusers UNet2DConditionModel with SD-XL's ``text_time`` conditioning."""

    sample_size: int = Field(128, ge=4)
    block_out_channels: list[int] = Field(default_factory=lambda: [320, 640, 1280])
    layers_per_block: int = Field(2, ge=1)
    transformer_layers_per_block: list[int] = Field(default_factory=lambda: [1, 2, 10])
    attention_head_dim: list[int] = Field(default_factory=lambda: [5, 10, 20])
    down_block_types: list[str] = Field(
        default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    )
    up_block_types: list[str] = Field(
        default_factory=lambda: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    )
    cross_attention_dim: int = Field(2048, ge=8)
    addition_time_embed_dim: int = Field(256, ge=8)
    pooled_dim: int = Field(1280, ge=8)
    norm_num_groups: int = Field(32, ge=1)
    weights: str | None = None


class VAEConfig(Section):
    """A diffusers AutoencoderKL (SD-XL VAE in the paper preset)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = Field(2, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    scaling_factor: float = Field(0.13025, gt=0)
    weights: str | None = None


class ConditionAdapterConfig(Section):
    """Maps ViT-shaped features to SD-XL's ``encoder_hidden_states`` and pooled ``text_embeds``."""

    num_tokens: int = Field(64, ge=1)
    heads: int = Field(32, ge=1)
    layers: int = Field(1, ge=1)


class SchedulerConfig(Section):
    """The diffusion noise schedule (SD-XL's scaled-linear DDPM betas by default)."""

    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    inference_steps: int = Field(30, ge=1)


class LossConfig(Section):
    """Weights of each loss term."""

    text_ce: float = Field(1.0, ge=0)
    image_cosine: float = Field(1.0, ge=0)
    diffusion_mse: float = Field(1.0, ge=0)


class ModelConfig(Section):
    """Every component of SEED-Story; ``preset`` names which shipped shape set this is."""

    preset: str = "paper"
    image_tokens: int = Field(64, ge=1)
    sd_image_size: int = Field(1024, ge=8)
    vit: ViTConfig = Field(default_factory=ViTConfig)
    input_resampler: ResamplerConfig = Field(default_factory=ResamplerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    output_resampler: ResamplerConfig = Field(default_factory=lambda: ResamplerConfig(num_queries=256))
    condition_adapter: ConditionAdapterConfig = Field(default_factory=ConditionAdapterConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
