import pytest
import torch

from seedstory.models.vit import build_vit, clip_normalize


def test_tiny_vit_output_shape(tiny):
    vit = build_vit(tiny)
    pixels = clip_normalize(torch.rand(2, 3, tiny.vit.image_size, tiny.vit.image_size))
    assert vit(pixels).shape == (2, tiny.vit.num_queries, tiny.vit.output_dim)


def test_vit_rejects_wrong_image_size(tiny):
    with pytest.raises(ValueError, match=r"expected pixels \[batch, 3, 56, 56\]"):
        build_vit(tiny)(torch.rand(1, 3, 64, 64))


def test_vit_uses_qwen_vl_tensor_names(tiny):
    names = set(build_vit(tiny).state_dict())
    assert {"conv1.weight", "positional_embedding", "ln_pre.weight", "transformer.resblocks.0.attn.in_proj.weight",
            "transformer.resblocks.1.mlp.c_fc.weight", "transformer.resblocks.1.mlp.c_proj.bias",
            "attn_pool.query", "attn_pool.attn.in_proj_weight", "attn_pool.pos_embed",
            "ln_post.weight", "proj"} <= names


def test_paper_vit_is_qwen_vl_vit_g_on_meta(paper):
    vit = build_vit(paper, device="meta")
    state = vit.state_dict()
    assert state["conv1.weight"].shape == (1664, 3, 14, 14)
    assert state["positional_embedding"].shape == (256, 1664)
    assert len(vit.transformer.resblocks) == 48
    assert state["transformer.resblocks.0.mlp.c_fc.weight"].shape == (8192, 1664)
    assert state["attn_pool.query"].shape == (256, 4096)
    assert state["attn_pool.kv_proj.weight"].shape == (4096, 1664)
    assert state["proj"].shape == (4096, 4096)
    assert vit(torch.empty(1, 3, 448, 448, device="meta")).shape == (1, 256, 4096)
