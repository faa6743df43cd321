"""Image and text embedders for FID, KID and CLIP score, all from local weights.

One interface for the image side: an ``ImageExtractor`` has a ``name``, a ``num_features`` and a
``digest`` of its weights, and maps uint8 images [N, 3, H, W] to features [N, num_features].
Scores are only comparable when both came from the same extractor (name and digest), so every
result records both. ``ClipPair`` adds the text side for CLIP score: unit embeddings of texts
and images in one joint space.

- ``toy``: the toy world's dual encoder (the tiny base's ViT and text tower), which knows what
  this world's pictures show;
- ``inception``: FID's InceptionV3 (torch-fidelity's port, through torchmetrics) from a local
  weights file, never downloaded;
- ``clip``: a transformers CLIP folder, ``local_files_only``.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase

from seedstory.config import SeedStoryConfig
from seedstory.data.frame_text import caption_ids
from seedstory.data.pixels import vit_pixels
from seedstory.models.dual_encoder import DualEncoder, load_dual_encoder
from seedstory.models.weights import local_copy

INCEPTION_FEATURES = 2048


def as_uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    """Pictures of one size -> uint8 [N, 3, H, W], the form every extractor takes."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)


def tensors_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer, by name: the identity of an extractor's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class ImageExtractor(nn.Module):
    """uint8 [N, 3, H, W] -> float features [N, num_features]; a torchmetrics ``feature=`` module."""

    name: str
    num_features: int
    digest: str

    def identity(self) -> dict[str, str | int]:
        return {"name": self.name, "digest": self.digest, "features": self.num_features}


class ClipPair(ABC):
    """Unit embeddings of texts and of uint8 images in one joint space, for CLIP score."""

    name: str
    digest: str

    @abstractmethod
    def embed_images(self, images: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "digest": self.digest}


class ToyImageExtractor(ImageExtractor):
    """The dual encoder's image embedding, the toy world's equivalent of CLIP image features."""

    def __init__(self, dual: DualEncoder) -> None:
        super().__init__()
        self.dual = dual.eval()
        self.name = "toy"
        self.num_features = dual.text.image_projection.out_features
        self.digest = tensors_digest(nn.ModuleDict({"vit": dual.vit, "projection": dual.text.image_projection}))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.dual.vit.config.image_size
        pixels = np.stack([vit_pixels(Image.fromarray(image.permute(1, 2, 0).numpy()), size) for image in images])
        return self.dual.encode_image(torch.from_numpy(pixels))


class ToyClipPair(ClipPair):
    def __init__(self, dual: DualEncoder, tokenizer: PreTrainedTokenizerBase) -> None:
        self.image = ToyImageExtractor(dual)
        self.tokenizer = tokenizer
        self.name = "toy"
        self.digest = tensors_digest(nn.ModuleDict({"image": self.image, "text": dual.text}))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokenized as the dual encoder was trained (``caption_ids``)."""
        length = self.image.dual.text.tower.positional_embedding.shape[0]
        ids, masks = zip(*(caption_ids(self.tokenizer, text, length) for text in texts))
        return self.image.dual.encode_text(torch.from_numpy(np.stack(ids)), torch.from_numpy(np.stack(masks)))


class InceptionExtractor(ImageExtractor):
    """FID's InceptionV3 pool features (2048), torch-fidelity's port of the TensorFlow original."""

    def __init__(self, weights: str) -> None:
        super().__init__()
        path = _local_file(weights, "eval.inception_weights", "InceptionV3 weights (pt_inception-2015-12-05)")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                                                feature_extractor_weights_path=str(path))
        except ModuleNotFoundError as err:
            raise RuntimeError(f"eval.extractor inception needs torch-fidelity ({err}); install it with a torchvision "
                               "built for this torch, or choose eval.extractor toy or clip") from None
        self.name = "inception"
        self.num_features = INCEPTION_FEATURES
        self.digest = _file_digest(path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inception(images).reshape(images.shape[0], -1)


class HFClip:
    """A transformers CLIP model and processor from a local folder."""

    def __init__(self, folder: str) -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = _local_file(folder, "eval.clip_model", "a transformers CLIP folder")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.digest = tensors_digest(self.model)

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt")
        return _embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        return _embedding(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                       attention_mask=inputs["attention_mask"]))


class ClipImageExtractor(ImageExtractor):
    def __init__(self, clip: HFClip) -> None:
        super().__init__()
        self.clip = clip
        self.name = "clip"
        self.num_features = clip.model.config.projection_dim
        self.digest = clip.digest

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.images(images)


class HFClipPair(ClipPair):
    def __init__(self, clip: HFClip) -> None:
        self.clip = clip
        self.name = "clip"
        self.digest = clip.digest

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.images(images)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.texts(texts)


def build_extractors(config: SeedStoryConfig) -> tuple[ImageExtractor, ClipPair]:
    """The configured image extractor and CLIP pair; each set of weights is loaded once."""
    evaluation = config.eval
    needed = {"eval.inception_weights": evaluation.inception_weights if evaluation.extractor == "inception" else "",
              "eval.clip_model": evaluation.clip_model if "clip" in (evaluation.extractor, evaluation.clip) else ""}
    unset = [key for key, value in needed.items() if value is None]
    if unset:
        raise FileNotFoundError(f"{' and '.join(unset)} not set: name the local (or s3://) weights "
                                "(InceptionV3's pt_inception-2015-12-05 file, a transformers CLIP folder); "
                                "nothing is downloaded")
    toy = functools.cache(lambda: load_dual_encoder(_toy_base(config)))
    clip = functools.cache(lambda: HFClip(evaluation.clip_model))
    if evaluation.extractor == "toy":
        extractor: ImageExtractor = ToyImageExtractor(toy()[0])
    elif evaluation.extractor == "clip":
        extractor = ClipImageExtractor(clip())
    else:
        extractor = InceptionExtractor(evaluation.inception_weights)
    pair = ToyClipPair(*toy()) if evaluation.clip == "toy" else HFClipPair(clip())
    return extractor, pair


def _toy_base(config: SeedStoryConfig) -> str:
    if config.train.base_weights is None:
        raise FileNotFoundError("eval.extractor/eval.clip toy needs train.base_weights: the tiny base folder "
                                "that holds the toy world's dual encoder")
    return config.train.base_weights


def _embedding(output) -> torch.Tensor:
    """Unit vectors of the projected features (``pooler_output`` of transformers 5's get_*_features)."""
    return F.normalize(output.pooler_output.float(), dim=-1)


def _local_file(uri: str | None, key: str, what: str) -> Path:
    if not uri:
        raise FileNotFoundError(f"{key} is not set: name {what} on local disk or s3:// (nothing is downloaded)")
    try:
        return local_copy(uri)
    except FileNotFoundError:
        raise FileNotFoundError(f"{key}: {uri} does not exist ({what}; nothing is downloaded)") from None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
