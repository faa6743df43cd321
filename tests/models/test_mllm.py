import pytest
import torch
from transformers import DynamicCache

from seedstory.models.mllm import TokenLayout, build_mllm


@pytest.fixture
def mllm(tiny, token_ids):
    torch.manual_seed(0)
    return build_mllm(tiny, token_ids)


def test_inputs_embeds_place_resampled_context_images(mllm, story_batch):
    ids, features, is_target = story_batch["input_ids"], story_batch["image_features"], story_batch["is_target"]
    embeds = mllm.inputs_embeds(ids, features, is_target)
    groups = mllm.image_positions(ids)
    assert groups.shape == (3, mllm.num_image_tokens, 2)
    resampled = mllm.embed_image(features)
    tokens = mllm.embed_tokens(ids)
    for image, (row, cols) in enumerate(zip(groups[:, 0, 0], groups[..., 1])):
        expected = tokens[row, cols] if is_target[image] else resampled[image]
        torch.testing.assert_close(embeds[row, cols], expected, rtol=0, atol=0)
    others = torch.ones_like(ids, dtype=torch.bool)
    others[groups[..., 0], groups[..., 1]] = False
    torch.testing.assert_close(embeds[others], tokens[others], rtol=0, atol=0)


def test_forward_returns_weighted_text_and_image_losses(mllm, story_batch, tiny):
    out = mllm(**story_batch)
    assert out.regressed.shape == (1, tiny.vit.num_queries, tiny.vit.output_dim)
    torch.testing.assert_close(out.target, story_batch["image_features"][1:2])
    assert out.text_loss.item() > 0 and 0 <= out.image_loss.item() <= 2
    weights = tiny.loss
    torch.testing.assert_close(out.loss, weights.text_ce * out.text_loss + weights.image_cosine * out.image_loss)
    assert out.logits.shape[:2] == story_batch["input_ids"].shape


def test_image_token_runs_are_validated(mllm, story_batch, token_ids):
    ids = story_batch["input_ids"].clone()
    first = mllm.image_positions(ids)[0, :, 1]
    ids[0, first[3]], ids[0, first[4]] = ids[0, first[4]].item(), ids[0, first[3]].item()
    with pytest.raises(ValueError, match="runs <img_00000>"):
        mllm.image_positions(ids)
    with pytest.raises(ValueError, match="not a multiple of 16"):
        mllm.image_positions(story_batch["input_ids"][:, :-3])
    with pytest.raises(ValueError, match="holds 3 images but image_features has 2"):
        mllm.inputs_embeds(story_batch["input_ids"], story_batch["image_features"][:2])
    with pytest.raises(ValueError, match="no image_features"):
        mllm.inputs_embeds(story_batch["input_ids"])


def test_incremental_steps_match_one_full_forward(mllm, token_ids):
    """What the story loop does: text, then the image queries, on one external cache."""
    mllm.eval()
    text = torch.tensor([[token_ids.bos, 40, 41, 42, token_ids.boi]])
    queries = mllm.image_query_embeds().unsqueeze(0)
    full = torch.cat([mllm.embed_tokens(text), queries], dim=1)
    with torch.no_grad():
        logits_full, hidden_full = mllm.step(full, DynamicCache(config=mllm.llm.config))
        cache = DynamicCache(config=mllm.llm.config)
        logits_a, _ = mllm.step(mllm.embed_tokens(text), cache)
        logits_b, hidden_b = mllm.step(queries, cache)
    assert cache.get_seq_length() == full.shape[1]
    torch.testing.assert_close(torch.cat([logits_a, logits_b], dim=1), logits_full, rtol=1e-4, atol=1e-5)
    regressed = mllm.regress(hidden_b)
    assert regressed.shape == (1, 16, 64)


def test_paper_mllm_on_meta_has_llama2_7b_with_66_tokens(paper):
    mllm = build_mllm(paper, device="meta")
    assert sum(p.numel() for p in mllm.llm.parameters()) == 6_738_956_288
    assert {t.device.type for t in [*mllm.parameters(), *mllm.buffers()]} == {"meta"}
    layout = mllm.layout
    assert layout == TokenLayout.appended(paper)
    assert (layout.vocab_size, layout.boi, layout.eoi, layout.image[0], layout.image[-1]) == (32066, 32000, 32001, 32002, 32065)
    features = torch.empty(2, 256, 4096, device="meta")
    assert mllm.embed_image(features).shape == (2, 64, 4096)
    assert mllm.regress(torch.empty(2, 64, 4096, device="meta")).shape == (2, 256, 4096)


def test_incremental_steps_leave_cudnn_attention_out(mllm):
    """Every decoding step has a new key length, and cuDNN's attention builds a graph per key length."""
    enabled = []
    hook = mllm.llm.register_forward_pre_hook(lambda *_: enabled.append(torch.backends.cuda.cudnn_sdp_enabled()))
    try:
        with torch.no_grad():
            mllm.step(mllm.image_query_embeds().unsqueeze(0), DynamicCache(config=mllm.llm.config))
    finally:
        hook.remove()
    assert enabled == [False] and torch.backends.cuda.cudnn_sdp_enabled(), "left out during the step only"
