"""Frozen and trained networks as the stages set them, and one backward pass through each."""

import pytest
import torch

from seedstory.models import freezing
from seedstory.models.detokenizer import build_detokenizer
from seedstory.models.lora import attach_lora
from seedstory.models.mllm import build_mllm
from seedstory.models.vit import build_vit, clip_normalize


@pytest.fixture
def models(tiny, token_ids):
    torch.manual_seed(0)
    return build_vit(tiny), build_mllm(tiny, token_ids), build_detokenizer(tiny)


def components_of(trainable: dict) -> set[str]:
    return {name.split(".", 1)[0] for name in trainable}


def assert_only_trainable_get_gradients(trainable: dict, *modules: torch.nn.Module) -> None:
    chosen = {id(p) for p in trainable.values()}
    for module in modules:
        for name, parameter in module.named_parameters():
            if id(parameter) in chosen:
                assert parameter.grad is not None, f"{name} is trainable but got no gradient"
            else:
                assert not parameter.requires_grad and parameter.grad is None, f"{name} is frozen but has a gradient"


def pixels(config, batch=2):
    return torch.rand(batch, 3, config.sd_image_size, config.sd_image_size) * 2 - 1


def vit_features(vit, config, batch=2):
    with torch.no_grad():
        return vit(clip_normalize(torch.rand(batch, 3, config.vit.image_size, config.vit.image_size)))


def test_a_trained_adapter_and_unet_get_gradients_through_a_frozen_vit_and_vae(models, tiny):
    vit, _, detokenizer = models
    freezing.freeze(vit, detokenizer.vae)
    freezing.train(detokenizer.adapter, detokenizer.unet)
    trainable = freezing.trainable_parameters({"condition_adapter": detokenizer.adapter, "unet": detokenizer.unet,
                                               "vae": detokenizer.vae})
    assert components_of(trainable) == {"condition_adapter", "unet"}
    assert len(trainable) == sum(1 for _ in detokenizer.adapter.parameters()) + sum(1 for _ in detokenizer.unet.parameters())
    detokenizer.loss(pixels(tiny), vit_features(vit, tiny)).backward()
    assert_only_trainable_get_gradients(trainable, vit, detokenizer)


def test_stage2_trains_lora_new_tokens_norms_and_resamplers(models, story_batch, tiny):
    vit, mllm, _ = models
    attach_lora(mllm, tiny.lora)
    freezing.freeze(vit)
    freezing.train_adapter(mllm)
    trainable = freezing.trainable_parameters({"llm": mllm.llm, "input_resampler": mllm.input_resampler,
                                               "output_resampler": mllm.output_resampler})
    assert components_of(trainable) == {"llm", "input_resampler", "output_resampler"}
    llm_names = [name for name in trainable if name.startswith("llm.")]
    assert all(freezing.is_adapter_parameter(name) for name in llm_names)
    kinds = {kind for name in llm_names for kind in ("lora_A", "lora_B", "trainable_tokens_delta", "modules_to_save")
             if f".{kind}." in name}
    assert kinds == {"lora_A", "lora_B", "trainable_tokens_delta", "modules_to_save"}
    deltas = [p for name, p in trainable.items() if "trainable_tokens_delta" in name]
    assert [d.shape[0] for d in deltas] == [len(mllm.layout.new_tokens)] * 2  # input and output rows only
    norms = {name.split(".modules_to_save")[0].rsplit(".", 1)[-1] for name in llm_names if "modules_to_save" in name}
    assert norms == set(tiny.lora.modules_to_save)
    out = mllm(**story_batch)
    out.loss.backward()
    assert_only_trainable_get_gradients(trainable, vit, mllm)


def test_stage2_requires_lora(models):
    vit, mllm, _ = models
    with pytest.raises(ValueError, match="attach_lora"):
        freezing.train_adapter(mllm)


def test_stage3_trains_unet_and_adapter_on_regressed_features(models, story_batch, tiny):
    vit, mllm, detokenizer = models
    freezing.freeze(vit, mllm, detokenizer.vae)
    freezing.train(detokenizer.adapter, detokenizer.unet)
    trainable = freezing.trainable_parameters({"condition_adapter": detokenizer.adapter, "unet": detokenizer.unet})
    with torch.no_grad():
        regressed = mllm(**story_batch).regressed
    detokenizer.loss(pixels(tiny, batch=regressed.shape[0]), regressed).backward()
    assert_only_trainable_get_gradients(trainable, vit, mllm, detokenizer)



def test_what_trains_runs_in_train_mode_and_what_is_frozen_in_eval_mode(models, tiny):
    """Loaded weights arrive in eval mode: left there, LoRA's dropout would never run."""
    vit, mllm, detokenizer = (module.eval() for module in models)
    freezing.train(detokenizer.adapter, detokenizer.unet)
    assert all(m.training for m in detokenizer.unet.modules())

    with_lora = attach_lora(mllm, tiny.lora).eval()
    freezing.train_adapter(with_lora)
    dropouts = [m for name, m in with_lora.llm.named_modules() if name.endswith("lora_dropout.default")]
    assert dropouts and all(m.training for m in dropouts)
    assert with_lora.input_resampler.training and with_lora.output_resampler.training

    frozen_mllm = build_mllm(tiny).train()
    freezing.freeze(vit.train(), frozen_mllm, detokenizer.vae.train())
    assert not any(m.training for m in (*vit.modules(), *frozen_mllm.modules(), *detokenizer.vae.modules()))
