"""Model shapes. The ``tiny`` and ``paper`` presets in ``seedstory/configs`` fill these in.

Every ``weights`` / ``tokenizer`` field is a local path or an ``s3://`` URI of a folder in its
ecosystem's format (HF transformers folder, diffusers folder, Qwen-VL safetensors); ``null``
means random initialisation. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from seedstory.config.base import Section


def _require_square(name: str, value: int) -> None:
    if math.isqrt(value) ** 2 != value:
        raise ValueError(f"{name} must be a square number (queries sit on a 2-D grid), got {value}")


class ViTConfig(Section):
    """Visual tokenizer (Qwen-VL ViT-G shape in the paper preset).

    ``position_grid`` is the side of the stored patch-position table (Qwen-VL keeps a 16x16
    table and interpolates it to the patch grid); ``pool_heads`` are the heads of the attention
    pool (Qwen-VL: ``output_dim // 128``).
    """

    image_size: int = Field(448, ge=14)
    patch_size: int = Field(14, ge=1)
    width: int = Field(1664, ge=8)
    layers: int = Field(48, ge=1)
    heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.9231, gt=0)
    position_grid: int = Field(16, ge=1)
    num_queries: int = Field(256, ge=1)
    pool_heads: int = Field(32, ge=1)
    output_dim: int = Field(4096, ge=8)
    weights: str | None = None

    @model_validator(mode="after")
    def _shapes(self) -> ViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.output_dim % self.pool_heads:
            raise ValueError(f"output_dim {self.output_dim} is not divisible by pool_heads {self.pool_heads}")
        _require_square("num_queries", self.num_queries)
        return self


class ResamplerConfig(Section):
    """A Qwen-VL-style resampler (as in SEED-X): learned queries cross-attending a token grid."""

    num_queries: int = Field(64, ge=1)
    heads: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _square(self) -> ResamplerConfig:
        _require_square("num_queries", self.num_queries)
        return self


class LLMConfig(Section):
    """A LLaMA-style decoder (LLaMA-2-7B in the paper preset); ``vocab_size`` is before image tokens."""

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
    """peft LoRA. Paper appendix C.2: r=6, alpha=32 on the seven projections.

    ``modules_to_save`` are trained in full and saved with the adapter (stage 2 trains the
    norms); the new tokens' embedding and output rows train through peft's trainable tokens.
    """

    r: int = Field(6, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = Field(default_factory=lambda: ["input_layernorm", "post_attention_layernorm", "norm"])


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

    @model_validator(mode="after")
    def _blocks(self) -> UNetConfig:
        counts = {len(self.block_out_channels), len(self.transformer_layers_per_block), len(self.attention_head_dim),
                  len(self.down_block_types), len(self.up_block_types)}
        if len(counts) != 1:
            raise ValueError("block_out_channels, transformer_layers_per_block, attention_head_dim, "
                             "down_block_types and up_block_types must have one entry per resolution")
        return self


class VAEConfig(Section):
    """A diffusers AutoencoderKL (SD-XL VAE in the paper preset)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = Field(2, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(32, ge=1)
    scaling_factor: float | None = Field(
        None, gt=0, description="multiplies the VAE's latents into the diffusion's unit-variance space; null: the "
        "value stored with the VAE weights (SD-XL's VAE: 0.13025; the tiny VAE measures its own when pretrained); "
        "set, it must match them")
    weights: str | None = None

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class ConditionAdapterConfig(Section):
    """Maps ViT-shaped features to SD-XL's ``encoder_hidden_states`` and pooled ``text_embeds``."""

    num_tokens: int = Field(64, ge=1)
    heads: int = Field(32, ge=1)
    pooled_from: Literal["tokens", "features"] = Field(
        "tokens", description="what the pooled ``text_embeds`` are made of: ``tokens``, the mean of the adapter's "
        "tokens (as SD-XL pools its text); ``features``, a linear map of the flattened input features, which keeps "
        "which token said what (where a thing is). The map has num_queries x output_dim x pooled_dim weights, so it "
        "is for small feature grids: the tiny shapes, not Qwen-VL's 256 x 4096",
    )
    spatial_channels: int = Field(
        0, ge=0, description="channels of a map, linear in the flattened input features, at the UNet's sample size, "
        "given to the UNet as input channels beside the noisy latents (0: none, SD-XL's UNet). It tells every latent "
        "position what belongs there, which a small UNet trained from scratch learns slowly through cross-attention "
        "alone. Like ``pooled_from: features`` it is for the tiny shapes: its weights number num_queries x output_dim "
        "x spatial_channels x sample_size^2",
    )

    @model_validator(mode="after")
    def _square(self) -> ConditionAdapterConfig:
        _require_square("num_tokens", self.num_tokens)
        return self


class SchedulerConfig(Section):
    """The diffusion noise schedule (SD-XL's scaled-linear DDPM betas) and the sampler's defaults.

    ``guidance_scale`` > 1 applies classifier-free guidance against all-zero features (the
    condition dropped by ``LossConfig.condition_dropout`` while training).
    """

    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(0.00085, gt=0)
    beta_end: float = Field(0.012, gt=0)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    rescale_betas_zero_snr: bool = Field(
        False, description="rescale the betas so the last timestep is pure noise (zero terminal SNR). SD-XL's "
        "schedule leaves about 7% of the latent's signal at its last timestep, which sampling from pure noise "
        "never has, so a UNet trained from scratch gets flat colours (a frame's mean) wrong; needs v_prediction, "
        "since predicting the noise of pure noise teaches nothing",
    )
    inference_steps: int = Field(30, ge=1)
    guidance_scale: float = Field(1.0, ge=1.0)

    @model_validator(mode="after")
    def _zero_snr_predicts_velocity(self) -> SchedulerConfig:
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("scheduler.rescale_betas_zero_snr needs prediction_type v_prediction: at zero SNR the "
                             "noise equals the noisy latent, so epsilon prediction says nothing about the image")
        return self


class TextTowerConfig(Section):
    """The text half of a CLIP-style dual encoder whose image half is the ViT.

    Only the tiny preset has one: it pretrains its own ViT on toy-world frames and captions, and
    keeps the pair as that world's CLIP for evaluation. The paper preset loads Qwen-VL's ViT and
    leaves ``model.text_tower`` null.
    """

    width: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    max_length: int = Field(64, ge=2, description="tokens per caption; longer captions are cut (CLIP: 77)")
    embed_dim: int = Field(64, ge=8, description="width of the joint image-text embedding")

    @model_validator(mode="after")
    def _heads(self) -> TextTowerConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class LossConfig(Section):
    """Weights of each loss term, and how often stage 1/3 drop the image condition (for guidance)."""

    text_ce: float = Field(1.0, ge=0)
    image_cosine: float = Field(1.0, ge=0)
    diffusion_mse: float = Field(1.0, ge=0)
    condition_dropout: float = Field(0.0, ge=0, lt=1)
    snr_gamma: float | None = Field(
        None, gt=0, description="stages 1 and 3: Min-SNR-gamma weighting of the diffusion MSE (each timestep's "
        "weight min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction), which stops the nearly clean "
        "timesteps from dominating the gradient; null: the plain MSE SD-XL trains with",
    )
    snr_floor: float | None = Field(
        None, gt=0, description="stages 1 and 3: the least weight of a timestep, in the same SNR terms (truncated-SNR "
        "weighting, max(SNR, floor)): under Min-SNR alone the noisiest timesteps, where a picture's layout is "
        "decided, weigh almost nothing; v-prediction only; null: no floor",
    )
    vae_kl: float = Field(
        1e-6, ge=0, description="weight of the KL term in VAE pretraining (reconstruction error + vae_kl * KL, "
        "both summed per image as SD's VAE weighs them)",
    )
    vae_foreground: float = Field(
        10.0, ge=0, description="VAE pretraining: extra weight of the squared error on pixels whose colour differs "
        "from their image's median (small objects on flat backgrounds); 0: plain mean squared error",
    )

    @model_validator(mode="after")
    def _weighting(self) -> LossConfig:
        if None not in (self.snr_floor, self.snr_gamma) and self.snr_floor > self.snr_gamma:
            raise ValueError(f"loss.snr_floor ({self.snr_floor}) must not exceed loss.snr_gamma ({self.snr_gamma})")
        return self


class ModelConfig(Section):
    """Every component of SEED-Story; ``preset`` names which shipped shape set this is.

    ``dtype`` is the dtype real weights are loaded in (random-init models are built in float32).
    """

    preset: str = "paper"
    image_tokens: int = Field(64, ge=1)
    sd_image_size: int = Field(1024, ge=8)
    dtype: Literal["float32", "bfloat16"] = "float32"
    vit: ViTConfig = Field(default_factory=ViTConfig)
    input_resampler: ResamplerConfig = Field(default_factory=ResamplerConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    lora: LoRAConfig = Field(default_factory=LoRAConfig)
    output_resampler: ResamplerConfig = Field(default_factory=lambda: ResamplerConfig(num_queries=256))
    condition_adapter: ConditionAdapterConfig = Field(default_factory=ConditionAdapterConfig)
    unet: UNetConfig = Field(default_factory=UNetConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    text_tower: TextTowerConfig | None = None
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.input_resampler.num_queries != self.image_tokens:
            raise ValueError(f"input_resampler.num_queries ({self.input_resampler.num_queries}) must equal "
                             f"image_tokens ({self.image_tokens}): one query per image-token position")
        if self.output_resampler.num_queries != self.vit.num_queries:
            raise ValueError(f"output_resampler.num_queries ({self.output_resampler.num_queries}) must equal "
                             f"vit.num_queries ({self.vit.num_queries}): it regresses ViT features")
        _require_square("image_tokens", self.image_tokens)
        if self.unet.sample_size * self.vae.downsampling != self.sd_image_size:
            raise ValueError(f"unet.sample_size ({self.unet.sample_size}) x the VAE's downsampling "
                             f"({self.vae.downsampling}) must equal sd_image_size ({self.sd_image_size})")
        if self.loss.snr_floor is not None and self.scheduler.prediction_type == "epsilon":
            raise ValueError("loss.snr_floor needs scheduler.prediction_type v_prediction: an epsilon prediction's "
                             "weight max(SNR, floor) / SNR is unbounded at the noisiest timesteps")
        return self

    def without_weights(self, *parts: str) -> ModelConfig:
        """This config with the ``weights`` of ``parts`` unset: those parts are built random (to be trained)."""
        return self.model_copy(update={part: getattr(self, part).model_copy(update={"weights": None}) for part in parts})
