import pytest
import torch

from seedstory.models.detokenizer import build_detokenizer


@pytest.fixture(scope="module")
def detokenizer(tiny):
    torch.manual_seed(0)
    return build_detokenizer(tiny)


def features(config, batch=2, seed=0):
    return torch.randn(batch, config.vit.num_queries, config.vit.output_dim, generator=torch.Generator().manual_seed(seed))


def test_condition_shapes(detokenizer, tiny):
    hidden, pooled = detokenizer.conditions(features(tiny))
    assert hidden.shape == (2, tiny.condition_adapter.num_tokens, tiny.unet.cross_attention_dim)
    assert pooled.shape == (2, tiny.unet.pooled_dim)
    assert detokenizer.time_ids(2).tolist() == [[64, 64, 0, 0, 64, 64]] * 2


def test_loss_is_finite_and_reproducible(detokenizer, tiny):
    pixels = torch.rand(2, 3, tiny.sd_image_size, tiny.sd_image_size) * 2 - 1
    first = detokenizer.loss(pixels, features(tiny), generator=torch.Generator().manual_seed(1))
    second = detokenizer.loss(pixels, features(tiny), generator=torch.Generator().manual_seed(1))
    assert first.dim() == 0 and torch.isfinite(first)
    assert first.item() == second.item()
    with pytest.raises(ValueError, match=r"pixel_values must be \[K, 3, 64, 64\]"):
        detokenizer.loss(pixels[:, :, :32, :32], features(tiny))


def test_decode_gives_images_in_unit_range(detokenizer, tiny):
    images = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, tiny.sd_image_size, tiny.sd_image_size)
    assert 0 <= images.min() and images.max() <= 1
    again = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)
    guided = detokenizer.decode(features(tiny), steps=2, generator=torch.Generator().manual_seed(0), guidance_scale=3.0)
    assert guided.shape == images.shape and not torch.equal(guided, images)
    with pytest.raises(ValueError, match=r"features must be \[K, 16, 64\]"):
        detokenizer.decode(torch.randn(1, 8, 64), steps=1)


def test_paper_detokenizer_on_meta_is_sdxl(paper):
    detokenizer = build_detokenizer(paper, device="meta")
    assert sum(p.numel() for p in detokenizer.unet.parameters()) == 2_567_463_684
    assert sum(p.numel() for p in detokenizer.vae.parameters()) == 83_653_863
    hidden, pooled = detokenizer.conditions(torch.empty(1, 256, 4096, device="meta"))
    assert hidden.shape == (1, 64, 2048) and pooled.shape == (1, 1280)
    assert detokenizer.unet.config.projection_class_embeddings_input_dim == 2816
