"""The de-tokenizer: ViT-shaped features -> SD-XL conditions -> UNet denoising -> VAE pixels.

Text encoders are not used: a condition adapter (a Q-Former-style resampler, paper appendix
C.1) turns [K, Nv, Dv] features into ``encoder_hidden_states`` [K, T, cross_attention_dim]
and pooled ``text_embeds`` [K, pooled_dim] (and, where configured, a spatial map given to the
UNet beside the latents); SD-XL's ``time_ids`` carry the image size.
Pixels are [K, 3, S, S] with S = ``sd_image_size``: in [-1, 1] for ``loss``, [0, 1] out of ``decode``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from diffusers import AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from seedstory.config.model import ModelConfig
from seedstory.models.losses import diffusion_mse_loss
from seedstory.models.resampler import Resampler
from seedstory.models.weights import load_diffusers_weights


class Conditions(NamedTuple):
    """What the UNet is conditioned on: cross-attention tokens [K, T, C], SD-XL's pooled ``text_embeds`` [K, P] and
    the spatial map [K, M, S, S] that goes in beside the latents (None without one)."""

    hidden: torch.Tensor
    pooled: torch.Tensor
    spatial: torch.Tensor | None

    def cat(self, other: Conditions) -> Conditions:
        """Both batches in one, ``self``'s rows first (classifier-free guidance's empty and real conditions)."""
        return Conditions(*(None if mine is None else torch.cat([mine, theirs]) for mine, theirs in zip(self, other)))


class ConditionAdapter(nn.Module):
    """[K, Nv, Dv] -> ``Conditions``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width, pooled = config.unet.cross_attention_dim, config.unet.pooled_dim
        flat = config.vit.num_queries * config.vit.output_dim
        self.pooled_from = config.condition_adapter.pooled_from
        self.resampler = Resampler(config.condition_adapter.num_tokens, width, config.condition_adapter.heads,
                                   kv_dim=config.vit.output_dim, norm_eps=1e-5)
        if self.pooled_from == "tokens":
            self.pool = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, pooled))
        else:
            self.pool = nn.Sequential(nn.Flatten(1), nn.LayerNorm(flat), nn.Linear(flat, pooled))
        channels, side = config.condition_adapter.spatial_channels, config.unet.sample_size
        self.spatial = nn.Sequential(nn.Flatten(1), nn.Linear(flat, channels * side * side),
                                     nn.Unflatten(1, (channels, side, side))) if channels else None

    def forward(self, features: torch.Tensor) -> Conditions:
        features = features.to(self.resampler.query.dtype)
        tokens = self.resampler(features)
        pooled = self.pool(tokens.mean(dim=1) if self.pooled_from == "tokens" else features)
        return Conditions(tokens, pooled, None if self.spatial is None else self.spatial(features))


def unet_config(config: ModelConfig) -> dict:
    """The diffusers UNet2DConditionModel config (the SD-XL base UNet's for the paper preset); a spatial condition
    map adds input channels after the latents'."""
    unet, latent_channels = config.unet, config.vae.latent_channels
    return dict(
        sample_size=unet.sample_size, in_channels=latent_channels + config.condition_adapter.spatial_channels,
        out_channels=latent_channels,
        down_block_types=tuple(unet.down_block_types), up_block_types=tuple(unet.up_block_types),
        block_out_channels=tuple(unet.block_out_channels), layers_per_block=unet.layers_per_block,
        transformer_layers_per_block=tuple(unet.transformer_layers_per_block),
        attention_head_dim=tuple(unet.attention_head_dim), cross_attention_dim=unet.cross_attention_dim,
        norm_num_groups=unet.norm_num_groups, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=unet.addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * unet.addition_time_embed_dim + unet.pooled_dim,
    )


def vae_config(config: ModelConfig) -> dict:
    """The diffusers AutoencoderKL config; ``scaling_factor`` only where the config sets it (else the weights' own)."""
    vae = config.vae
    blocks = len(vae.block_out_channels)
    shapes = dict(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=tuple(vae.block_out_channels),
        layers_per_block=vae.layers_per_block, latent_channels=vae.latent_channels,
        norm_num_groups=vae.norm_num_groups, sample_size=config.sd_image_size,
    )
    return shapes if vae.scaling_factor is None else {**shapes, "scaling_factor": vae.scaling_factor}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, pixel_values: torch.Tensor, batch_size: int = 64) -> float:
    """1 / the standard deviation of the VAE's latents over training frames (pixels in [-1, 1]), as SD measured
    its own: the noise schedule assumes unit-variance latents, and an autoencoder trained with a weak KL term
    settles on any scale. Off by a factor s, the training noise at the last timestep leaves the image's layout
    visible, and sampling from pure noise starts where training never went."""
    generator = torch.Generator(vae.device).manual_seed(0)  # the same frames always measure the same scale
    latents = torch.cat([vae.encode(pixel_values[start:start + batch_size].to(vae.dtype)).latent_dist
                         .sample(generator).float() for start in range(0, len(pixel_values), batch_size)])
    return float(1.0 / latents.std())


def noise_scheduler(config: ModelConfig) -> DDPMScheduler:
    """SD-XL's training schedule: DDPM betas (rescaled to zero terminal SNR where the config asks), ``leading``
    spacing with offset 1, no sample clipping."""
    s = config.scheduler
    return DDPMScheduler(
        num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
        beta_schedule=s.beta_schedule, prediction_type=s.prediction_type, clip_sample=False,
        steps_offset=1, timestep_spacing="leading", rescale_betas_zero_snr=s.rescale_betas_zero_snr,
    )


class Detokenizer(nn.Module):
    """Without a VAE it is the part stages 1 and 3 train: its frozen VAE encodes frames outside the DeepSpeed
    engine (``encode_frames``), so ZeRO never partitions, gathers or exports it."""

    def __init__(self, config: ModelConfig, adapter: ConditionAdapter, unet: UNet2DConditionModel,
                 vae: AutoencoderKL | None) -> None:
        super().__init__()
        self.config = config
        self.adapter = adapter
        self.unet = unet
        self.vae = vae
        self.scheduler = noise_scheduler(config)

    def time_ids(self, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """SD-XL ``add_time_ids`` for uncropped square images: (S, S, 0, 0, S, S) per row."""
        size = self.config.sd_image_size
        return torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32, device=device).repeat(batch, 1)

    def conditions(self, features: torch.Tensor) -> Conditions:
        """The UNet's conditions for ViT-shaped features [K, Nv, Dv]."""
        expected = (self.config.vit.num_queries, self.config.vit.output_dim)
        if features.dim() != 3 or tuple(features.shape[1:]) != expected:
            raise ValueError(f"features must be [K, {expected[0]}, {expected[1]}], got {list(features.shape)}")
        return self.adapter(features)

    def _predict(self, latents: torch.Tensor, timesteps: torch.Tensor, conditions: Conditions,
                 time_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        latents = latents.to(dtype)
        if conditions.spatial is not None:
            latents = torch.cat([latents, conditions.spatial.to(dtype)], dim=1)
        return self.unet(
            latents, timesteps, encoder_hidden_states=conditions.hidden.to(dtype),
            added_cond_kwargs={"text_embeds": conditions.pooled.to(dtype), "time_ids": time_ids.to(dtype)},
        ).sample

    def loss(self, pixel_values: torch.Tensor, features: torch.Tensor, time_ids: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE at uniformly drawn timesteps (the VAE stays frozen)."""
        return self.denoising_loss(encode_frames(self._vae(), self.config, pixel_values, generator), features,
                                   time_ids, generator)

    def denoising_loss(self, latents: torch.Tensor, features: torch.Tensor, time_ids: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """``loss`` from the frames' scaled VAE latents (``encode_frames``): what adapter and UNet train on."""
        batch, device = latents.shape[0], latents.device
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator,
                                  device=device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        dropout = self.config.loss.condition_dropout
        if dropout > 0 and self.training:  # val losses judge the conditioned model, as it paints
            keep = torch.rand(batch, generator=generator, device=device) >= dropout
            features = features * keep.to(device=features.device, dtype=features.dtype).view(-1, 1, 1)
        time_ids = self.time_ids(batch, device) if time_ids is None else time_ids
        prediction = self._predict(noisy, timesteps, self.conditions(features), time_ids)
        epsilon = self.scheduler.config.prediction_type == "epsilon"
        target = noise if epsilon else self.scheduler.get_velocity(latents, noise, timesteps)
        weights, floor, gamma = None, self.config.loss.snr_floor, self.config.loss.snr_gamma
        if floor is not None or gamma is not None:
            snr = compute_snr(self.scheduler, timesteps)
            weights = snr.clamp(min=floor, max=gamma) / (snr if epsilon else snr + 1)
        return diffusion_mse_loss(prediction, target, weights)

    def _vae(self) -> AutoencoderKL:
        if self.vae is None:
            raise ValueError("this de-tokenizer was built without its VAE (for training): load it with "
                             "seedstory.models.export.load_detokenizer to encode or paint frames")
        return self.vae

    @torch.no_grad()
    def decode(self, features: torch.Tensor, steps: int | None = None,
               generator: torch.Generator | list[torch.Generator] | None = None,
               guidance_scale: float | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Sample images [K, 3, S, S] in [0, 1] with an Euler sampler (fresh per call: safe to run concurrently).

        A list of K generators gives each image its own noise, so a batch paints what K calls would.
        """
        steps = steps or self.config.scheduler.inference_steps
        guidance = self.config.scheduler.guidance_scale if guidance_scale is None else guidance_scale
        sampler = EulerDiscreteScheduler.from_config(self.scheduler.config, timestep_spacing="trailing")
        device, batch = features.device, features.shape[0]
        sampler.set_timesteps(steps, device=device)
        conditions = self.conditions(features)
        time_ids = self.time_ids(batch, device) if time_ids is None else time_ids
        if guidance > 1:
            conditions = self.conditions(torch.zeros_like(features)).cat(conditions)
            time_ids = torch.cat([time_ids, time_ids])
        side = self.config.unet.sample_size
        shape = (batch, self.config.vae.latent_channels, side, side)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32) * sampler.init_noise_sigma
        for t in sampler.timesteps:
            model_input = torch.cat([latents, latents]) if guidance > 1 else latents
            prediction = self._predict(sampler.scale_model_input(model_input, t), t, conditions, time_ids).float()
            if guidance > 1:
                empty, conditioned = prediction.chunk(2)
                prediction = empty + guidance * (conditioned - empty)
            latents = sampler.step(prediction, t, latents, generator=generator).prev_sample
        vae = self._vae()
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        return ((images.float() + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, config: ModelConfig, pixel_values: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[K, 3, S, S] pixels in [-1, 1] -> latents sampled from the frozen VAE's posterior, scaled for the noise schedule."""
    size = config.sd_image_size
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise ValueError(f"pixel_values must be [K, 3, {size}, {size}] in [-1, 1], got {list(pixel_values.shape)}")
    posterior = vae.encode(pixel_values.to(vae.dtype)).latent_dist
    return posterior.sample(generator) * vae.config.scaling_factor


def build_unet(config: ModelConfig, device: str | torch.device = "cpu") -> UNet2DConditionModel:
    if config.unet.weights is not None and torch.device(device).type != "meta":
        return load_diffusers_weights(UNet2DConditionModel, config.unet.weights, unet_config(config), config.dtype).to(device)
    with torch.device(device):
        return UNet2DConditionModel(**unet_config(config))


def build_vae(config: ModelConfig, device: str | torch.device = "cpu") -> AutoencoderKL:
    """In eval mode: the VAE is frozen in every stage."""
    if config.vae.weights is not None and torch.device(device).type != "meta":
        vae = load_diffusers_weights(AutoencoderKL, config.vae.weights, vae_config(config), config.dtype).to(device)
    else:
        with torch.device(device):
            vae = AutoencoderKL(**vae_config(config))
    return vae.eval()


def build_detokenizer(config: ModelConfig, device: str | torch.device = "cpu") -> Detokenizer:
    """Adapter (random init) + UNet + VAE (real weights where ``unet.weights`` / ``vae.weights`` are set)."""
    with torch.device(device):
        adapter = ConditionAdapter(config)
    return Detokenizer(config, adapter, build_unet(config, device), build_vae(config, device))
