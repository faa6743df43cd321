"""The embedded local stack (object storage, MLflow, Ray head) for laptops, CI and tests."""

from seedstory.stack.local import LocalStack
from seedstory.stack.processes import StackError, free_port

__all__ = ["LocalStack", "StackError", "free_port"]
