"""The de-tokenizer's trained half built under deepspeed.zero.Init on two gloo ranks: partitioned as it is made,
its weights copied in one submodule at a time, the values those of the files."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seedstory.config.model import ModelConfig
from seedstory.config.train import StageConfig
from seedstory.models import partitioned
from seedstory.models.detokenizer import ConditionAdapter, Detokenizer, build_unet, build_vae
from seedstory.models.export import DETOKENIZER_ADAPTER, export_detokenizer, export_vae, load_detokenizer
from seedstory.models.weights import WeightsError
from seedstory.stack import free_port

WORLD = 2


@pytest.fixture(scope="module")
def exported(tiny: ModelConfig, tmp_path_factory) -> str:
    """A stage-1-style de-tokenizer export with weights unlike any fresh initialisation."""
    root = tmp_path_factory.mktemp("partitioned")
    config = tiny.model_copy(update={"vae": tiny.vae.model_copy(update={"weights": str(root / "vae")})})
    export_vae(build_vae(tiny), str(root / "vae"))
    torch.manual_seed(7)
    detokenizer = Detokenizer(config, ConditionAdapter(config), build_unet(config), vae=None)
    with torch.no_grad():
        for parameter in detokenizer.parameters():
            parameter.add_(0.5)
    export_detokenizer(detokenizer, str(root / "detokenizer"))
    return str(root / "detokenizer")


def _rank(rank: int, port: int, uri: str, bf16: bool, results) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))  # as Ray Train sets them
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    from seedstory.training.deepspeed_engine import partitioned_build

    gathered_at_once: list[int] = []
    real_gather = partitioned.deepspeed.zero.GatheredParameters

    class CountingGather(real_gather):
        def __init__(self, params, *args, **kwargs):
            gathered_at_once.append(sum(p.ds_numel for p in params if hasattr(p, "ds_id")))
            super().__init__(params, *args, **kwargs)

    partitioned.deepspeed.zero.GatheredParameters = CountingGather
    stage = StageConfig(registered_model="x", zero_stage=3, bf16=bf16)
    with partitioned_build(stage, WORLD):
        detokenizer = partitioned.load_trained_detokenizer(uri)
    shards = {name: (p.numel(), p.ds_tensor.numel(), p.ds_numel, p.dtype)
              for name, p in detokenizer.named_parameters()}
    with real_gather(list(detokenizer.parameters())):
        values = {name: p.detach().float().numpy().copy() for name, p in detokenizer.named_parameters()}
    results.put((rank, shards, max(gathered_at_once), values if rank == 0 else None))
    dist.destroy_process_group()


@pytest.mark.parametrize("bf16", [True, False])
def test_the_trained_detokenizer_is_built_partitioned_and_loads_the_exported_weights(exported, bf16):
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank, args=(rank, port, exported, bf16, results)) for rank in range(WORLD)]
    for process in processes:
        process.start()
    reports = sorted(results.get(timeout=120) for _ in range(WORLD))
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    dtype = torch.bfloat16 if bf16 else torch.float32
    for rank, shards, largest_gather, values in reports:
        total = sum(full for _, _, full, _ in shards.values())
        for name, (held, shard, full, param_dtype) in shards.items():
            assert held == 0, f"rank {rank} holds all of {name}"
            assert shard == math.ceil(full / WORLD), name
            assert param_dtype == dtype, name
        assert 0 < largest_gather < total / 4, "weights go in one submodule at a time, never the whole network"
    expected = _exported_values(exported)
    values = reports[0][3]
    assert values.keys() == expected.keys()
    for name, value in values.items():
        torch.testing.assert_close(torch.from_numpy(value), expected[name].to(dtype).float(), rtol=0, atol=0, msg=name)


def _exported_values(uri: str) -> dict[str, torch.Tensor]:
    """The same export through diffusers' and safetensors' own loaders."""
    return {name: p.detach().float() for name, p in load_detokenizer(uri).named_parameters()
            if not name.startswith("vae.")}


def test_outside_zero_init_the_same_code_loads_the_whole_network(exported):
    detokenizer = partitioned.load_trained_detokenizer(exported)
    assert detokenizer.vae is None
    expected = _exported_values(exported)
    for name, p in detokenizer.named_parameters():
        assert torch.equal(p.detach().float(), expected[name]), name


def test_weights_that_do_not_fit_are_refused_naming_the_tensors(tiny, exported, tmp_path):
    narrower = tiny.model_copy(update={"condition_adapter": tiny.condition_adapter.model_copy(update={"num_tokens": 9})})
    with pytest.raises(WeightsError, match=r"mismatched shapes: .*resampler.query \[4, 64\] \(expected \[9, 64\]\)"):
        partitioned.load_partitioned(ConditionAdapter(narrower), Path(exported) / DETOKENIZER_ADAPTER, "adapter")
