"""The token contract shared by data, models and generation.

An image inside text is ``<img>`` + N image tokens ``<img_00000>`` ... + ``</img>``.
Each of those is one special token, so its id is stable and never split. The tiny
preset trains a byte-level BPE tokenizer offline on toy-world captions; the paper preset extends
the real LLaMA-2 tokenizer with the same tokens (32000 + 2 + 64).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

if TYPE_CHECKING:  # the data pipeline's decoding actors import this module; transformers costs each one a second
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOI = "<img>"
EOI = "</img>"
INST = "[INST]"
BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
PAD = "<pad>"


def image_token(index: int) -> str:
    if not 0 <= index <= 99999:
        raise ValueError(f"image token index must be in [0, 99999], got {index}")
    return f"<img_{index:05d}>"


def image_token_strings(image_tokens: int) -> list[str]:
    return [BOI, EOI, *(image_token(i) for i in range(image_tokens))]


def add_image_tokens(tokenizer: PreTrainedTokenizerBase, image_tokens: int) -> int:
    """Add BOI, EOI and ``image_tokens`` image tokens as special tokens; returns how many were new."""
    if image_tokens < 1:
        raise ValueError(f"image_tokens must be >= 1, got {image_tokens}")
    tokens = [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
              for t in image_token_strings(image_tokens)]
    return tokenizer.add_tokens(tokens, special_tokens=True)


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int, image_tokens: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most ``vocab_size`` base tokens (BOS prepended), plus the image tokens.

    Byte-level means no input is ever unknown; a small corpus may stop BPE short of
    ``vocab_size`` merges, so the model side must size its embeddings from ``len(tokenizer)``.
    """
    from transformers import PreTrainedTokenizerFast  # here, not at the top: see the import there

    specials = [BOS, EOS, UNK, PAD]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(f"vocab_size must be >= {len(alphabet) + len(specials)} for a byte-level BPE, got {vocab_size}")
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(  # like LLaMA: BOS first, no EOS
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
    )
    add_image_tokens(tokenizer, image_tokens)
    return tokenizer


@dataclass(frozen=True)
class ImageTokenIds:
    """The ids a model and a sample builder need; ``vocab_size`` is ``len(tokenizer)``."""

    boi: int
    eoi: int
    image: tuple[int, ...]
    bos: int
    eos: int
    pad: int
    vocab_size: int


def image_token_ids(tokenizer: PreTrainedTokenizerBase, image_tokens: int) -> ImageTokenIds:
    """Ids of BOI, EOI and the image tokens; raises if the tokenizer lacks any of them."""
    wanted = image_token_strings(image_tokens)
    ids = tokenizer.convert_tokens_to_ids(wanted)
    missing = [t for t, i in zip(wanted, ids) if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"tokenizer lacks {len(missing)} image tokens (first: {missing[0]}); call add_image_tokens")
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"tokenizer has no {name.removesuffix('_id')}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ImageTokenIds(
        boi=ids[0], eoi=ids[1], image=tuple(ids[2:]), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
        pad=pad, vocab_size=len(tokenizer),
    )
