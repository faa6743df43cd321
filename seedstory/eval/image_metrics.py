"""FID, KID and CLIP score over features extracted once.

FID and KID are torchmetrics' (``FrechetInceptionDistance`` and ``KernelInceptionDistance``):
both accept any ``feature=`` module, compute in float64, and are what the field reports. Images
go through the extractor once (``extract``); the metrics then get an identity module over the
stored features, so one extraction serves FID, KID and every per-segment subset. KID is the
figure to read for small sets (its estimate is unbiased; FID's is not and needs N > d to be
stable).

CLIP score is the mean cosine similarity of matched pairs, floored at 0 as in CLIPScore, on a
0-1 scale (the paper's Table 2 column): text-image (a caption and its picture) or image-image (a
generated picture and the true frame at the same place).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from seedstory.eval.extractors import ImageExtractor, as_uint8

EXTRACT_BATCH = 64


class IncomparableError(ValueError):
    """Two feature sets (or results) from different extractors: their distances mean nothing together."""


@dataclass(frozen=True)
class FeatureSet:
    features: torch.Tensor
    extractor: dict[str, str | int]

    def __len__(self) -> int:
        return self.features.shape[0]

    def subset(self, index: Sequence[int]) -> FeatureSet:
        return FeatureSet(self.features[list(index)], self.extractor)


def extract(extractor: ImageExtractor, images: Sequence[Image.Image]) -> FeatureSet:
    """Features [N, d] (float64) of pictures, in batches, recorded with the extractor's identity."""
    parts = [extractor(as_uint8(images[first:first + EXTRACT_BATCH])).double()
             for first in range(0, len(images), EXTRACT_BATCH)]
    features = torch.cat(parts) if parts else torch.zeros(0, extractor.num_features, dtype=torch.float64)
    return FeatureSet(features, extractor.identity())


class _Stored(nn.Module):
    """The torchmetrics ``feature=`` module over features already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def check_comparable(*identities: dict) -> None:
    """Refuse to put side by side what different extractors measured."""
    names = {(identity["name"], identity["digest"]) for identity in identities}
    if len(names) > 1:
        raise IncomparableError("scores from different extractors cannot be compared: "
                                + ", ".join(f"{name} ({digest})" for name, digest in sorted(names)))


def fid(real: FeatureSet, fake: FeatureSet) -> float:
    check_comparable(real.extractor, fake.extractor)
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"FID needs at least 2 pictures per set, got {len(real)} real and {len(fake)} generated")
    metric = FrechetInceptionDistance(feature=_Stored(real.features.shape[1]))
    metric.update(real.features, real=True)
    metric.update(fake.features, real=False)
    return float(metric.compute())


def kid(real: FeatureSet, fake: FeatureSet, subset_size: int, subsets: int, seed: int = 0) -> tuple[float, float]:
    """KID's mean and standard deviation over ``subsets`` random subsets (seeded), each capped at the smaller set."""
    check_comparable(real.extractor, fake.extractor)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 pictures per set, got {len(real)} real and {len(fake)} generated")
    metric = KernelInceptionDistance(feature=_Stored(real.features.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.features, real=True)
    metric.update(fake.features, real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def clip_score(first: torch.Tensor, second: torch.Tensor) -> list[float]:
    """Per pair, max(cos, 0) of matched unit embeddings [N, e] x [N, e]."""
    if first.shape != second.shape:
        raise ValueError(f"CLIP score pairs rows: got {tuple(first.shape)} and {tuple(second.shape)}")
    return (first * second).sum(dim=-1).clamp(min=0).tolist()
