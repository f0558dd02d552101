"""Who this process is among those torchrun started, read from the environment (no torch), and the cores it may use."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kdcompress.core.errors import KdcError


@dataclass(frozen=True)
class World:
    """This process's place among the processes that torchrun started (one process without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and reports."""
        return self.rank == 0


def launched() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), before any group is joined."""
    env = os.environ
    try:
        return World(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
        )
    except ValueError:
        raise KdcError("RANK, WORLD_SIZE or LOCAL_RANK is not a number: start kdc with torchrun, or unset them") from None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
