"""The embedded stack's credentials: generated once per state directory, kept 0600.

They outlive restarts on purpose: a stack restarted on the same state directory keeps its
objects, and the clients that stored the keys (a shell that sourced ``env.sh``, a running
job) keep working.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StackSecrets:
    s3_access_key: str
    s3_secret_key: str
    ray_token: str

    def __repr__(self) -> str:
        return f"StackSecrets(s3_access_key={self.s3_access_key!r}, s3_secret_key='***', ray_token='***')"

    @classmethod
    def generate(cls) -> StackSecrets:
        return cls(
            s3_access_key="SEEDSTORY" + secrets.token_hex(6).upper(),
            s3_secret_key=secrets.token_urlsafe(30),
            ray_token=secrets.token_hex(32),
        )

    @classmethod
    def load_or_create(cls, path: Path) -> StackSecrets:
        if path.exists():
            try:
                return cls(**json.loads(path.read_text()))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path} is not a stack secrets file ({err}); remove it to generate new keys") from err
        created = cls.generate()
        write_private(path, json.dumps(asdict(created)))
        return created


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
