"""The tiny preset's base weights folder: written once, filling only the locations a config leaves unset."""

from __future__ import annotations

import json

import pytest

from seedstory.config import load_config
from seedstory.training.base_weights import (
    MANIFEST, BaseWeightsError, read_manifest, with_base_weights, write_tiny_base,
)


@pytest.fixture(scope="module")
def config(tiny_base_config):
    return tiny_base_config


def test_base_weights_are_written_once_and_fill_only_unset_locations(config, tmp_path):
    base = config.train.base_weights
    manifest = read_manifest(base)
    assert write_tiny_base(load_config("tiny", ["data.toy.stories=4"]), base) == manifest
    assert config.model.vit.weights == f"{base}/vit.safetensors" and config.model.llm.tokenizer == f"{base}/tokenizer"
    chosen = load_config("tiny", [f"train.base_weights={base}", "model.vae.weights=/elsewhere/vae"])
    assert with_base_weights(chosen).model.vae.weights == "/elsewhere/vae"
    assert with_base_weights(chosen).model.unet.weights == f"{base}/unet"


def test_base_weights_for_other_shapes_or_a_missing_folder_are_refused(config, tmp_path):
    with pytest.raises(BaseWeightsError, match="other model shapes"):
        write_tiny_base(load_config("tiny", ["model.vit.layers=3"]), config.train.base_weights)
    unmeasured = read_manifest(config.train.base_weights)
    unmeasured["model"]["vae"]["scaling_factor"] = 1.0
    (tmp_path / "unmeasured").mkdir()
    (tmp_path / "unmeasured" / MANIFEST).write_text(json.dumps(unmeasured))
    with pytest.raises(BaseWeightsError, match="before the VAE's latent scale was measured"):
        write_tiny_base(load_config("tiny", ["data.toy.stories=4"]), str(tmp_path / "unmeasured"))
    with pytest.raises(BaseWeightsError, match="pretrain_bases"):
        with_base_weights(load_config("tiny", [f"train.base_weights={tmp_path}/none"]))
    with pytest.raises(BaseWeightsError, match="released checkpoints"):
        write_tiny_base(load_config("paper"), str(tmp_path))
