"""The SEED-Story MLLM: a LLaMA decoder with image features in and out through resamplers.

Sequence contract: an image is ``<img>`` + the N image tokens
``<img_00000>`` ... in order + ``</img>``. A *context* image's N token embeddings are replaced
by the input resampler's N vectors; a *target* image keeps the learned embeddings of its
image tokens (the learnable queries), and the last hidden states at those N positions go
through the output resampler to regress the target's ViT features.

Tensor shapes: ViT features [K, Nv, Dv] (Nv = ``vit.num_queries``, Dv = ``vit.output_dim``),
LLM width D, N = ``image_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import Cache, LlamaConfig, LlamaForCausalLM

from seedstory.config.model import LossConfig, ModelConfig
from seedstory.models.losses import cosine_regression_loss, weighted_total
from seedstory.models.resampler import Resampler
from seedstory.models.weights import WeightsError, load_llm_weights
from seedstory.tokenizer import ImageTokenIds

# cuDNN's attention builds a graph for every new key length, about a millisecond of host time per layer
# call on an H200: a decoding step's key length is new every step, so it is left out of incremental calls.
DECODING_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class TokenLayout:
    """Where the image tokens sit in the vocabulary the LLM is sized for."""

    vocab_size: int
    boi: int
    eoi: int
    image: tuple[int, ...]

    @classmethod
    def from_ids(cls, ids: ImageTokenIds) -> TokenLayout:
        return cls(vocab_size=ids.vocab_size, boi=ids.boi, eoi=ids.eoi, image=tuple(ids.image))

    @classmethod
    def appended(cls, config: ModelConfig) -> TokenLayout:
        """The ids ``add_image_tokens`` gives a tokenizer of exactly ``llm.vocab_size`` tokens (LLaMA-2's 32000)."""
        base = config.llm.vocab_size
        return cls(vocab_size=base + 2 + config.image_tokens, boi=base, eoi=base + 1,
                   image=tuple(range(base + 2, base + 2 + config.image_tokens)))

    @property
    def new_tokens(self) -> list[int]:
        return [self.boi, self.eoi, *self.image]


@dataclass
class MLLMOutput:
    """``loss`` is the weighted sum of the terms present; ``regressed``/``target`` are [Kt, Nv, Dv]."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    text_loss: torch.Tensor | None
    image_loss: torch.Tensor | None
    regressed: torch.Tensor | None
    target: torch.Tensor | None


def llama_config(config: ModelConfig, vocab_size: int) -> LlamaConfig:
    llm = config.llm
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        max_position_embeddings=llm.max_position_embeddings, rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta}, tie_word_embeddings=False,
    )


def build_input_resampler(config: ModelConfig) -> Resampler:
    """ViT features [K, Nv, Dv] -> [K, N, D]."""
    return Resampler(config.image_tokens, config.llm.hidden_size, config.input_resampler.heads,
                     kv_dim=config.vit.output_dim, norm_eps=1e-5)


def build_output_resampler(config: ModelConfig) -> Resampler:
    """Hidden states [K, N, D] -> [K, Nv, Dv]."""
    return Resampler(config.vit.num_queries, config.vit.output_dim, config.output_resampler.heads,
                     kv_dim=config.llm.hidden_size, norm_eps=1e-5)


class SeedStoryMLLM(nn.Module):
    def __init__(self, llm: nn.Module, input_resampler: Resampler, output_resampler: Resampler,
                 layout: TokenLayout, loss_weights: LossConfig) -> None:
        super().__init__()
        if len(layout.image) != input_resampler.num_queries:
            raise ValueError(f"{len(layout.image)} image tokens but the input resampler makes "
                             f"{input_resampler.num_queries} vectors per image")
        self.llm = llm
        self.input_resampler = input_resampler
        self.output_resampler = output_resampler
        self.layout = layout
        self.loss_weights = loss_weights
        self.register_buffer("image_token_ids", torch.tensor(layout.image), persistent=False)

    @property
    def num_image_tokens(self) -> int:
        return len(self.layout.image)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, D] input embeddings (through peft's trainable new-token rows if attached)."""
        return self.llm.get_input_embeddings()(input_ids)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        """ViT features [K, Nv, Dv] -> [K, N, D], the embeddings of a context image's N token positions."""
        resampler_dtype = self.input_resampler.query.dtype
        return self.input_resampler(features.to(resampler_dtype))

    def image_query_embeds(self) -> torch.Tensor:
        """[N, D]: the learned embeddings fed at a generated image's N positions."""
        return self.embed_tokens(self.image_token_ids)

    def regress(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last-layer hidden states at an image's N positions [K, N, D] -> ViT-shaped features [K, Nv, Dv]."""
        return self.output_resampler(hidden.to(self.output_resampler.query.dtype))

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[K, N, 2] (row, column) of each image's N token positions, images in row-major order.

        Raises unless every image is a complete, contiguous, in-order run of the N image tokens.
        """
        nonzero = torch.isin(input_ids, self.image_token_ids).nonzero()
        count, n = nonzero.shape[0], self.num_image_tokens
        if count % n:
            raise ValueError(f"found {count} image-token positions, not a multiple of {n} tokens per image")
        groups = nonzero.view(count // n, n, 2)
        ids = input_ids[groups[..., 0], groups[..., 1]]
        in_order = (ids == self.image_token_ids).all()
        one_row = (groups[..., 0] == groups[:, :1, 0]).all()
        contiguous = (groups[:, 1:, 1] - groups[:, :-1, 1] == 1).all()
        if not (in_order and one_row and contiguous):
            raise ValueError(f"image tokens must form runs <img_00000> ... <img_{n - 1:05d}> inside one sequence")
        return groups

    def inputs_embeds(self, input_ids: torch.Tensor, image_features: torch.Tensor | None = None,
                      is_target: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, D]: token embeddings, context images' positions replaced by their resampled features.

        ``image_features`` [K, Nv, Dv] holds every image of the batch in row-major order of
        appearance; ``is_target`` [K] bool marks images to generate (default: none).
        """
        return self._embed(input_ids, self.image_positions(input_ids), image_features, is_target)

    def _embed(self, input_ids: torch.Tensor, groups: torch.Tensor, image_features: torch.Tensor | None,
               is_target: torch.Tensor | None) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        if image_features is None:
            if groups.shape[0]:
                raise ValueError(f"the batch holds {groups.shape[0]} images but no image_features were given")
            return embeds
        context = ~self._target_mask(groups.shape[0], image_features, is_target)
        if context.any():
            values = self.embed_image(image_features[context]).to(embeds.dtype)
            rows, cols = groups[context, :, 0].reshape(-1), groups[context, :, 1].reshape(-1)
            embeds = embeds.index_put((rows, cols), values.reshape(-1, embeds.shape[-1]))
        return embeds

    def _target_mask(self, images: int, features: torch.Tensor, is_target: torch.Tensor | None) -> torch.Tensor:
        if features.shape[0] != images:
            raise ValueError(f"the batch holds {images} images but image_features has {features.shape[0]}")
        expected = (self.output_resampler.num_queries, self.output_resampler.embed_dim)
        if tuple(features.shape[1:]) != expected:
            raise ValueError(f"image_features must be [K, {expected[0]}, {expected[1]}], got {list(features.shape)}")
        if is_target is None:
            return torch.zeros(images, dtype=torch.bool, device=features.device)
        if is_target.shape != (images,) or is_target.dtype != torch.bool:
            raise ValueError(f"is_target must be a bool tensor of shape [{images}], got {is_target.dtype} {list(is_target.shape)}")
        return is_target

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, image_features: torch.Tensor | None = None,
                is_target: torch.Tensor | None = None) -> MLLMOutput:
        """Training forward: text CE on ``labels`` (-100 = ignored) and cosine regression of target images."""
        groups = self.image_positions(input_ids)
        embeds = self._embed(input_ids, groups, image_features, is_target)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, output_hidden_states=True)
        regressed = target = image_loss = None
        if image_features is not None and is_target is not None and is_target.any():
            targets = groups[is_target]
            hidden = out.hidden_states[-1][targets[..., 0], targets[..., 1]]
            regressed = self.regress(hidden)
            target = image_features[is_target]
            image_loss = cosine_regression_loss(regressed, target)
        text_loss = out.loss if labels is not None else None
        terms = {"text_ce": text_loss, "image_cosine": image_loss}
        loss = weighted_total(terms, self.loss_weights) if any(v is not None for v in terms.values()) else None
        return MLLMOutput(logits=out.logits, loss=loss, text_loss=text_loss, image_loss=image_loss,
                          regressed=regressed, target=target)

    def step(self, inputs_embeds: torch.Tensor, cache: Cache, attention_mask: torch.Tensor | None = None,
             **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """One incremental decoding call on an external cache: (logits [B, T, V], last hidden [B, T, D])."""
        with sdpa_kernel(DECODING_ATTENTION):
            out = self.llm(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True,
                           output_hidden_states=True, attention_mask=attention_mask, **kwargs)
        return out.logits, out.hidden_states[-1]


def build_llm(config: ModelConfig, vocab_size: int, device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """LLaMA from ``config.llm``: real weights when ``llm.weights`` is set (grown to ``vocab_size``), else random."""
    if config.llm.weights is None or torch.device(device).type == "meta":
        with torch.device(device):
            return LlamaForCausalLM(llama_config(config, vocab_size))
    llm = load_llm_weights(config.llm.weights, llama_config(config, vocab_size), config.dtype)
    stored = llm.get_input_embeddings().num_embeddings
    if stored > vocab_size:
        raise WeightsError(f"{config.llm.weights}: vocabulary of {stored} tokens, more than the tokenizer's {vocab_size}")
    if stored < vocab_size:
        llm.resize_token_embeddings(vocab_size)
    return llm.to(device)


def build_mllm(config: ModelConfig, tokens: ImageTokenIds | None = None,
               device: str | torch.device = "cpu") -> SeedStoryMLLM:
    """The MLLM sized for ``tokens`` (a tokenizer's ids), or for ``TokenLayout.appended`` when None."""
    layout = TokenLayout.from_ids(tokens) if tokens is not None else TokenLayout.appended(config)
    llm = build_llm(config, layout.vocab_size, device)
    with torch.device(device):
        resamplers = build_input_resampler(config), build_output_resampler(config)
        return SeedStoryMLLM(llm, *resamplers, layout=layout, loss_weights=config.loss)

