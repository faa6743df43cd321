"""How the tiny preset's pretrained bases are judged on the toy world, and the targets they must meet.

- VAE round trip: each frame encoded (posterior mode) and decoded at SD size, then read back by the
  toy world's ``Judge``: mean text-image coherence with the frame's own caption, target >= 0.98.
- Dual encoder: caption -> frame retrieval among 64 candidates (the frame and 63 others that show
  something else), top-1 target >= 0.90.
- LLM: next-token loss and top-1 accuracy on the val stories as text, and how often the caption it writes
  greedily after the true story so far is a legal next frame (the world's rules, as free generation's
  caption validity judges them). No target: stage 2 adapts it, but a story cannot be more valid than
  the captions its base writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from transformers import PreTrainedTokenizerBase

from seedstory.data.story_text import next_caption_prompt
from seedstory.data.toyworld.captions import parse_caption
from seedstory.data.toyworld.judge import Judge
from seedstory.data.toyworld.validity import caption_validity
from seedstory.models.dual_encoder import DualEncoder, retrieval_top1
from seedstory.tokenizer import INST

TARGETS = {"val/vae_coherence": 0.98, "val/retrieval_top1": 0.90}
CANDIDATES = 64
BATCH = 64
CAPTION_TOKENS = 128


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, sd_pixels: np.ndarray) -> list[Image.Image]:
    """[N, 3, S, S] pixels in [-1, 1] -> the decoded pictures (the posterior's mode, no sampling)."""
    images = []
    for start in range(0, len(sd_pixels), BATCH):
        decoded = vae(torch.from_numpy(sd_pixels[start:start + BATCH]).to(vae.dtype)).sample.float()
        array = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        images += [Image.fromarray(frame) for frame in array]
    return images


def vae_coherence(vae: AutoencoderKL, sd_pixels: np.ndarray, captions: list[str]) -> float:
    """Mean ``Judge`` coherence of each round-tripped frame with its own caption."""
    judge = Judge(image_size=sd_pixels.shape[-1])
    return float(np.mean([judge.coherence(image, caption)
                          for image, caption in zip(vae_round_trip(vae, sd_pixels), captions)]))


def caption_retrieval(model: DualEncoder, vit_pixels: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                      captions: list[str], seed: int = 0) -> tuple[float, int]:
    """Top-1 caption -> frame retrieval among ``CANDIDATES`` frames, and the number of candidates used
    (fewer when the split has fewer distinct frames); frames are told apart by the facts their captions state."""
    shows = [frozenset(parse_caption(caption).as_set()) for caption in captions]
    return retrieval_top1(model.eval(), torch.from_numpy(vit_pixels), torch.from_numpy(input_ids),
                          torch.from_numpy(attention_mask), shows, CANDIDATES, seed)


@torch.no_grad()
def text_scores(llm: torch.nn.Module, texts: list[np.ndarray]) -> dict[str, float]:
    """Mean next-token loss and top-1 accuracy over every token of ``texts`` (one story at a time: no padding)."""
    losses, hits, tokens = 0.0, 0, 0
    for ids in texts:
        ids_t = torch.from_numpy(ids)[None]
        logits = llm.eval()(input_ids=ids_t).logits[0, :-1].float()
        targets = ids_t[0, 1:]
        losses += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        hits += int((logits.argmax(-1) == targets).sum())
        tokens += len(targets)
    return {"val/llm_loss": losses / tokens, "val/llm_next_token_accuracy": hits / tokens}


@torch.no_grad()
def write_next_caption(llm: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, captions: Sequence[str]) -> str:
    """The caption ``llm`` writes greedily after ``captions``, up to the [INST] that would open the one after."""
    prompt = torch.tensor([next_caption_prompt(tokenizer, captions)])
    out = llm.eval().generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=CAPTION_TOKENS,
                              do_sample=False, stop_strings=[INST], tokenizer=tokenizer,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True).split(INST)[0].strip()


def next_caption_validity(stories: Sequence[Sequence[str]], write: Callable[[Sequence[str]], str]) -> float:
    """The fraction of next captions, each written by ``write`` after the true captions before it, that
    state a frame the world's rules allow after the true previous one."""
    legal = [caption_validity(captions[index - 1], [write(captions[:index])])[0]
             for captions in stories for index in range(1, len(captions))]
    if not legal:
        raise ValueError("no story has a second caption to judge")
    return float(np.mean(legal))


def verdicts(scores: dict[str, float]) -> list[str]:
    """One PASS/MISS line per target that was measured, then a plain line per score without a target."""
    return [f"{'PASS' if scores[name] >= target else 'MISS'}  {name} = {scores[name]:.4f} (target >= {target})"
            for name, target in TARGETS.items() if name in scores] + [
        f"      {name} = {value:.4f}" for name, value in scores.items() if name not in TARGETS]
