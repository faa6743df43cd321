import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from seedstory.models.vit import build_vit
from seedstory.models.weights import WeightsError, check_tensors, load_tokenizer, local_copy, read_tensors
from seedstory.storage import read_bytes, write_bytes
from seedstory.tokenizer import build_tiny_tokenizer, image_token_ids
from tests.conftest import REPO_ROOT


def test_check_tensors_names_every_problem():
    with pytest.raises(WeightsError) as err:
        check_tensors({"a": (2,), "b": (3,)}, {"b": (4,), "c": (1,)}, "ckpt")
    message = str(err.value)
    assert "ckpt: missing tensors: a" in message and "unexpected tensors: c" in message
    assert "mismatched shapes: b [4] (expected [3])" in message


def test_vit_loads_from_a_sharded_qwen_vl_folder(tmp_path, tiny):
    """Qwen-VL ships the ViT inside the whole model's shards as transformer.visual.*"""
    torch.manual_seed(0)
    vit = build_vit(tiny)
    visual = {f"transformer.visual.{k}": v.contiguous() for k, v in vit.state_dict().items()}
    names = sorted(visual)
    shards = {"model-00001-of-00002.safetensors": {**dict((n, visual[n]) for n in names[::2]),
                                                    "transformer.wte.weight": torch.zeros(4, 4)},
              "model-00002-of-00002.safetensors": dict((n, visual[n]) for n in names[1::2])}
    for shard, tensors in shards.items():
        save_file(tensors, tmp_path / shard)
    index = {"weight_map": {n: s for s, tensors in shards.items() for n in tensors}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config = tiny.model_copy(deep=True)
    config.vit.weights = str(tmp_path)
    loaded = build_vit(config)
    pixels = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), vit(pixels))
    assert "wte.weight" not in read_tensors(tmp_path, "transformer.visual.")


def test_vit_missing_tensor_is_named(tmp_path, tiny):
    state = {f"transformer.visual.{k}": v for k, v in build_vit(tiny).state_dict().items() if k != "ln_post.bias"}
    save_file(state, tmp_path / "vit.safetensors")
    config = tiny.model_copy(deep=True)
    config.vit.weights = str(tmp_path / "vit.safetensors")
    with pytest.raises(WeightsError, match="missing tensors: ln_post.bias"):
        build_vit(config)


def test_missing_local_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        local_copy(str(tmp_path / "nowhere"))


def test_s3_folder_is_cached_and_refreshed(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDSTORY_WEIGHTS_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{s3.bucket}/weights-test/{tmp_path.name}"
    write_bytes(f"{uri}/config.json", b"{}")
    write_bytes(f"{uri}/sub/part.bin", b"12345")
    local = local_copy(uri)
    assert (local / "config.json").read_bytes() == b"{}" and (local / "sub" / "part.bin").read_bytes() == b"12345"
    write_bytes(f"{uri}/sub/part.bin", b"1234567")
    assert (local_copy(uri) / "sub" / "part.bin").read_bytes() == b"1234567"
    with pytest.raises(FileNotFoundError, match="weights not found"):
        local_copy(f"s3://{s3.bucket}/weights-test/absent")


def test_same_shape_reexport_is_never_served_stale(s3, tmp_path, monkeypatch):
    """``init_base_weights --overwrite --seed 1`` over seed 0: every file keeps its size, the cache must still refresh."""
    monkeypatch.setenv("SEEDSTORY_WEIGHTS_CACHE", str(tmp_path / "cache"))
    base = f"s3://{s3.bucket}/weights-test/{tmp_path.name}"

    def init(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "jobs/init_base_weights.py", "--config", "tiny", *args, f"train.base_weights={base}"],
            cwd=REPO_ROOT, env=os.environ, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    init()
    first = read_tensors(local_copy(f"{base}/vit.safetensors"))
    first_llm = (local_copy(f"{base}/llm") / "model.safetensors").read_bytes()
    init("--overwrite", "--seed", "1")
    second = read_tensors(local_copy(f"{base}/vit.safetensors"))
    second_llm = (local_copy(f"{base}/llm") / "model.safetensors").read_bytes()

    assert first.keys() == second.keys() and len(first_llm) == len(second_llm)
    assert any(not torch.equal(first[name], second[name]) for name in first) and first_llm != second_llm
    assert second_llm == read_bytes(f"{base}/llm/model.safetensors")


def test_tokenizer_folder_is_extended_with_image_tokens(tmp_path, tokenizer, tiny):
    plain = build_tiny_tokenizer(["a red circle", "a blue square"], 300, image_tokens=1)
    plain.save_pretrained(tmp_path / "plain")
    extended = load_tokenizer(str(tmp_path / "plain"), tiny.image_tokens)
    ids = image_token_ids(extended, tiny.image_tokens)
    assert len(ids.image) == tiny.image_tokens and ids.vocab_size == len(plain) + tiny.image_tokens - 1
    tokenizer.save_pretrained(tmp_path / "full")
    assert len(load_tokenizer(str(tmp_path / "full"), tiny.image_tokens)) == len(tokenizer)
