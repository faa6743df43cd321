"""Where a replica's models run: the device follows what Ray assigned the replica, not a guess."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

# A Ray instance of its own, with one GPU declared: Ray assigns it to a task that asks for one whether or
# not the machine has it, which is what a deployment's num_gpus does on a GPU node.
SCRIPT = """
import ray
from seedstory.serving.selection import replica_device
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
print(ray.get(ray.remote(num_gpus=0)(lambda: str(replica_device("writer"))).remote()))
try:
    print(ray.get(ray.remote(num_gpus=1)(lambda: str(replica_device("painter"))).remote()))
except Exception as err:
    print("refused:", getattr(err, "cause", err))
"""


def test_a_replica_uses_the_gpu_ray_assigned_it_and_refuses_one_torch_cannot_see():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    without, with_gpu = done.stdout.strip().splitlines()[-2:]
    assert without == "cpu"
    if torch.cuda.is_available():
        assert with_gpu == "cuda"
    else:
        assert with_gpu == (f"refused: Ray assigned this painter replica GPU [0], but torch sees no CUDA device "
                            f"(torch {torch.__version__})")
