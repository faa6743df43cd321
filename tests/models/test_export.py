"""Export -> load gives bit-identical outputs, locally and through the local S3 server."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import PeftModel
from safetensors.torch import load_file, save_file

from seedstory.config import load_config
from seedstory.models.detokenizer import build_detokenizer
from seedstory.models.export import (
    export_detokenizer, export_llm, export_mllm, export_vae, export_vit, load_detokenizer, load_mllm,
)
from seedstory.models.lora import attach_lora, merge_lora
from seedstory.models.mllm import build_mllm
from seedstory.models.vit import build_vit
from seedstory.models.weights import WeightsError
from seedstory.storage import filesystem_for


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Stand-in for training: move every trainable tensor (LoRA B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))


def base_uri(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    s3 = request.getfixturevalue("s3")
    return f"s3://{s3.bucket}/models-test/{tmp_path.name}"


@pytest.fixture
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDSTORY_WEIGHTS_CACHE", str(tmp_path / "cache"))


def test_mllm_with_lora_round_trips(root, tiny, token_ids, tokenizer, story_batch, weights_cache):
    torch.manual_seed(0)
    mllm = build_mllm(tiny, token_ids)
    export_llm(mllm.llm, base_uri(root, "base-llm"))
    config = tiny.model_copy(deep=True)
    config.llm.weights = base_uri(root, "base-llm")
    attach_lora(mllm, config.lora)
    perturb(mllm, seed=1)
    export_mllm(mllm, config, base_uri(root, "mllm"), tokenizer=tokenizer)

    loaded, loaded_tokenizer = load_mllm(base_uri(root, "mllm"))
    assert isinstance(loaded.llm, PeftModel)
    assert loaded.layout == mllm.layout
    assert loaded_tokenizer("a red circle").input_ids == tokenizer("a red circle").input_ids
    mllm.eval()
    with torch.no_grad():
        before, after = mllm(**story_batch), loaded(**story_batch)
    assert torch.equal(before.logits, after.logits)
    assert torch.equal(before.regressed, after.regressed)

    merged = merge_lora(loaded)
    assert not isinstance(merged.llm, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(merged(**story_batch).logits, before.logits, atol=1e-5, rtol=1e-4)
    plain = merged.llm
    assert merge_lora(merged).llm is plain  # an LLM without an adapter is left as it is


@pytest.mark.parametrize("preset", ["tiny", "toy"])  # toy: velocity to pure noise, pooled and spatial conditions
def test_vit_and_detokenizer_round_trip(root, preset, weights_cache):
    model = load_config(preset).model
    torch.manual_seed(0)
    vit, detokenizer = build_vit(model), build_detokenizer(model)
    export_vit(vit, base_uri(root, "vit.safetensors"))
    export_vae(detokenizer.vae, base_uri(root, "vae"))
    config = model.model_copy(deep=True)
    config.vit.weights, config.vae.weights = base_uri(root, "vit.safetensors"), base_uri(root, "vae")
    detokenizer.config = config
    perturb(detokenizer.unet, seed=2)
    export_detokenizer(detokenizer, base_uri(root, "detok"))

    pixels = torch.rand(2, 3, model.vit.image_size, model.vit.image_size)
    loaded_vit = build_vit(config)
    with torch.no_grad():
        assert torch.equal(vit(pixels), loaded_vit(pixels))
        features = vit(pixels)
    loaded = load_detokenizer(base_uri(root, "detok"))
    detokenizer.eval()
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(detokenizer.decode(features, steps=2, generator=generator()),
                       loaded.decode(features, steps=2, generator=generator()))


def export_lora_mllm(tmp_path, tiny, token_ids):
    """A LoRA MLLM exported to ``tmp_path/mllm`` over its base LLM exported to ``tmp_path/base``."""
    torch.manual_seed(0)
    mllm = build_mllm(tiny, token_ids)
    export_llm(mllm.llm, str(tmp_path / "base"))
    config = tiny.model_copy(deep=True)
    config.llm.weights = str(tmp_path / "base")
    attach_lora(mllm, config.lora)
    export_mllm(mllm, config, str(tmp_path / "mllm"))
    return mllm, tmp_path / "mllm"


def test_exported_parts_load_in_their_own_ecosystems(tmp_path, tiny, token_ids):
    """A plain diffusers / peft user can read the folders without seedstory."""
    mllm, _ = export_lora_mllm(tmp_path, tiny, token_ids)
    detokenizer = build_detokenizer(tiny)
    detokenizer.unet.save_pretrained(tmp_path / "detok" / "unet")

    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(tmp_path / "base")
    assert isinstance(PeftModel.from_pretrained(base, tmp_path / "mllm" / "adapter"), PeftModel)
    assert isinstance(UNet2DConditionModel.from_pretrained(tmp_path / "detok" / "unet"), UNet2DConditionModel)
    assert set(load_file(tmp_path / "mllm" / "input_resampler.safetensors")) == set(mllm.input_resampler.state_dict())


@pytest.fixture
def exported(tmp_path, tiny, token_ids):
    return export_lora_mllm(tmp_path, tiny, token_ids)[1]


def edit_safetensors(file, edit) -> None:
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def test_missing_resampler_tensor_is_named(exported):
    edit_safetensors(exported / "output_resampler.safetensors", lambda t: t.pop("ln_kv.bias"))
    with pytest.raises(WeightsError, match=r"output_resampler.safetensors: missing tensors: ln_kv.bias"):
        load_mllm(str(exported))


def test_mismatched_resampler_tensor_is_named(exported):
    edit_safetensors(exported / "input_resampler.safetensors", lambda t: t.update(query=torch.zeros(3, 64)))
    with pytest.raises(WeightsError, match=r"mismatched shapes: query \[3, 64\] \(expected \[16, 64\]\)"):
        load_mllm(str(exported))


def test_missing_adapter_tensor_is_named(exported):
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    edit_safetensors(exported / "adapter" / "adapter_model.safetensors", lambda t: t.pop(name))
    with pytest.raises(WeightsError, match=f"missing tensors: {name}"):
        load_mllm(str(exported))


def test_missing_unet_tensor_is_named(tmp_path, tiny):
    unet = build_detokenizer(tiny).unet
    unet.save_pretrained(tmp_path / "unet")
    edit_safetensors(tmp_path / "unet" / "diffusion_pytorch_model.safetensors", lambda t: t.pop("conv_in.bias"))
    config = tiny.model_copy(deep=True)
    config.unet.weights = str(tmp_path / "unet")
    with pytest.raises(WeightsError, match="conv_in.bias"):
        build_detokenizer(config)


def test_llm_folder_with_other_shape_is_rejected_by_field(exported, tiny):
    config_file = exported.parent / "base" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_hidden_layers"] = 3
    config_file.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=r"num_hidden_layers=3 \(preset: 2\)"):
        load_mllm(str(exported))


def test_interrupted_export_is_neither_complete_nor_registered(s3, mlflow_server, tiny, tmp_path, weights_cache,
                                                               monkeypatch):
    """A re-export that dies while uploading the UNet leaves a folder no loader and no registry takes."""
    from mlflow import MlflowClient

    from seedstory.training.registry import IncompleteExportError, register_export

    root = f"s3://{s3.bucket}/models-test/{tmp_path.name}"
    torch.manual_seed(0)
    detokenizer = build_detokenizer(tiny)
    export_vae(detokenizer.vae, base_uri(root, "vae"))
    detokenizer.config = tiny.model_copy(update={"vae": tiny.vae.model_copy(update={"weights": base_uri(root, "vae")})})
    export_detokenizer(detokenizer, base_uri(root, "detok"))
    load_detokenizer(base_uri(root, "detok"))

    fs = filesystem_for(root)[0]  # the cached client every export to this store goes through
    put_file = fs.put_file

    def dies_in_the_unet(local, remote, *args, **kwargs):
        if "/unet/" in remote:
            raise ConnectionError("upload interrupted")
        return put_file(local, remote, *args, **kwargs)

    perturb(detokenizer.unet, seed=4)
    with monkeypatch.context() as patch, pytest.raises(ConnectionError, match="upload interrupted"):
        patch.setattr(fs, "put_file", dies_in_the_unet)
        export_detokenizer(detokenizer, base_uri(root, "detok"))

    with pytest.raises(WeightsError, match=r"no seedstory\.json"):
        load_detokenizer(base_uri(root, "detok"))
    client = MlflowClient()
    run = client.create_run(client.create_experiment(f"interrupted-{tmp_path.name}"))
    with pytest.raises(IncompleteExportError, match="did not finish"):
        register_export(client, f"interrupted-{tmp_path.name}", base_uri(root, "detok"), run.info.run_id)
    assert client.search_registered_models(f"name = 'interrupted-{tmp_path.name}'") == []
