"""FID, KID and CLIP score: the closed form, identity and symmetry, monotone in damage, refused across extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from seedstory.eval.extractors import ImageExtractor, ToyClipPair, ToyImageExtractor, as_uint8
from seedstory.eval.image_metrics import FeatureSet, IncomparableError, clip_score, extract, fid, kid

# Damage in steps an extractor can see: the trained toy encoder ignores pixel noise below about 0.2
# of the range (measured FID 0.0307 clean, 0.0297 at 0.1, 0.0315 at 0.2), as a trained network should.
LEVELS = {"noised": (0.0, 0.3, 0.45, 0.6), "colour_shifted": (0.0, 0.1, 0.2, 0.4)}


class RandomExtractor(ImageExtractor):
    """A fixed random projection of 16x16 pixels: features with no training behind them."""

    def __init__(self, seed: int = 0, features: int = 32) -> None:
        super().__init__()
        self.projection = torch.randn(3 * 16 * 16, features, generator=torch.Generator().manual_seed(seed))
        self.name, self.num_features, self.digest = "random", features, f"seed-{seed}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(images.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
        return small.flatten(1) @ self.projection


def noised(frames: list[Image.Image], level: float, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(np.asarray(f, dtype=np.float32) + rng.normal(0, 255 * level, (*f.size[::-1], 3)),
                                    0, 255).astype(np.uint8)) for f in frames]


def colour_shifted(frames: list[Image.Image], level: float) -> list[Image.Image]:
    shift = np.array([1.0, -0.5, -1.0]) * 255 * level
    return [Image.fromarray(np.clip(np.asarray(f, dtype=np.float32) + shift, 0, 255).astype(np.uint8)) for f in frames]


@pytest.fixture(scope="module")
def extractors(trained_dual) -> dict[str, ImageExtractor]:
    return {"toy": ToyImageExtractor(trained_dual[0]), "random": RandomExtractor()}


def test_the_closed_form_for_two_gaussians_is_reproduced():
    generator = torch.Generator().manual_seed(0)
    scale_a, scale_b = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([2.0, 1.0, 0.5, 3.0])
    shift = torch.tensor([1.0, 0.0, -2.0, 0.0])
    identity = {"name": "gauss", "digest": "-", "features": 4}
    a = FeatureSet((torch.randn(40_000, 4, generator=generator) * scale_a).double(), identity)
    b = FeatureSet((torch.randn(40_000, 4, generator=generator) * scale_b + shift).double(), identity)
    expected = float(shift.square().sum() + (scale_a - scale_b).square().sum())
    assert fid(a, b) == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("name", ["toy", "random"])
def test_a_set_against_itself_is_zero_and_the_distance_is_symmetric(extractors, held_out, name):
    half = len(held_out.frames) // 2
    first = extract(extractors[name], held_out.frames[:half])
    second = extract(extractors[name], held_out.frames[half:])
    assert abs(fid(first, first)) < 1e-6 * max(1.0, fid(first, second))
    assert fid(first, second) == pytest.approx(fid(second, first), rel=1e-6)
    mean, std = kid(first, first, 100, 50)
    assert abs(mean) < std  # unbiased: zero within one subset's spread


@pytest.mark.parametrize("damage", [noised, colour_shifted])
@pytest.mark.parametrize("name", ["toy", "random"])
def test_fid_and_kid_rise_with_every_step_of_damage(extractors, held_out, name, damage):
    half = len(held_out.frames) // 2
    reference = extract(extractors[name], held_out.frames[:half])
    steps = [extract(extractors[name], damage(held_out.frames[half:], level)) for level in LEVELS[damage.__name__]]
    fids = [fid(reference, s) for s in steps]
    kids = [kid(reference, s, 100, 50)[0] for s in steps]
    assert fids == sorted(fids) and len(set(fids)) == len(fids), fids
    assert kids == sorted(kids) and len(set(kids)) == len(kids), kids


def test_kid_caps_its_subsets_at_the_smaller_set_and_is_seeded(extractors, held_out):
    reference = extract(extractors["random"], held_out.frames[:200])
    few = extract(extractors["random"], noised(held_out.frames[200:212], 0.2))
    assert kid(reference, few, 100, 20, seed=3) == kid(reference, few, 100, 20, seed=3)
    with pytest.raises(ValueError, match="at least 2 pictures"):
        kid(reference, few.subset([0]), 100, 20)


def test_sets_from_different_extractors_are_never_compared(extractors, held_out):
    frames = held_out.frames[:20]
    with pytest.raises(IncomparableError, match="random .*seed-0.*seed-1"):
        fid(extract(extractors["random"], frames), extract(RandomExtractor(seed=1), frames))
    with pytest.raises(IncomparableError):
        kid(extract(extractors["random"], frames), extract(extractors["toy"], frames), 10, 5)


def test_matched_captions_and_frames_score_well_above_shuffled_ones(trained_dual, held_out):
    pair = ToyClipPair(*trained_dual)
    images = pair.embed_images(as_uint8(held_out.frames))
    texts = pair.embed_texts(held_out.captions)
    shuffled = np.random.default_rng(0).permutation(len(held_out.captions))
    matched, mismatched = np.mean(clip_score(texts, images)), np.mean(clip_score(texts[shuffled], images))
    assert matched > mismatched + 0.3, (matched, mismatched)
    assert 0.0 <= mismatched and matched <= 1.0
