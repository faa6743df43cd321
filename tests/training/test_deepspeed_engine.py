"""DeepSpeed as the environment installs it."""

from __future__ import annotations

from deepspeed.git_version_info import installed_ops


def test_the_cpu_comm_op_is_built_at_install_not_at_engine_start():
    """Every CPU engine start loads DeepSpeed's shared-memory comm op; JIT-compiled, it costs the
    first job on a machine 45 s, and again whenever a different ninja built the cached one."""
    assert installed_ops["deepspeed_shm_comm"], "install DeepSpeed with DS_BUILD_SHM_COMM=1 (make env)"
