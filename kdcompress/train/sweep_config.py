"""`kdc sweep`'s settings: a grid of (T, alpha, beta, KD loss) over seeds, everything else a compress configuration."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kdcompress.core.errors import KdcError
from kdcompress.train.config import COMPRESS_ONLY, GRID, SWEEP_SEEDS, Cell, CompressConfig, settings, sweep_settings


def grid(name: str) -> tuple[Any, ...]:
    """The default values of a GRID setting (its Setting.grid): the default grid is 2 x 2 x 2 = 8 students a seed
    (its cost: benchmarks/sweep_cost.py)."""
    return settings()[name][1].grid


@dataclass(frozen=True)
class SweepConfig:
    """A grid of (T, alpha, beta, KD loss) over seeds; everything else comes from a compress configuration."""

    base: CompressConfig
    temperatures: tuple[float, ...] = grid("temperature")
    alphas: tuple[float, ...] = grid("alpha")
    betas: tuple[float, ...] = grid("beta")
    kd_losses: tuple[str, ...] = grid("kd_loss")  # --kd-loss kl,dist,dkd: each a grid axis value (losses.KD_LOSSES)
    seeds: int = SWEEP_SEEDS
    out: str | None = None  # sweep folder; default <artifacts>/sweep-<dataset>

    def resolved(self) -> "SweepConfig":
        """Validate every grid value with compress's own ranges and fill the defaults."""
        base = replace(self.base, int8=False).resolved()
        if not 1 <= self.seeds <= 100:
            raise KdcError(f"--seeds must be between 1 and 100, got {self.seeds}")
        for flag, values, field in (
            ("--T", self.temperatures, "temperature"),
            ("--alpha", self.alphas, "alpha"),
            ("--beta", self.betas, "beta"),
        ):
            if not values:
                raise KdcError(f"{flag} needs at least one value")
            if len(set(values)) != len(values):
                raise KdcError(f"{flag} lists a value twice: {', '.join(f'{v:g}' for v in values)}")
            for value in values:
                replace(base, **{field: value}).resolved()
        if not self.kd_losses or len(set(self.kd_losses)) != len(self.kd_losses):
            raise KdcError(f"--kd-loss needs each loss once, got '{','.join(self.kd_losses)}'")
        for loss in self.kd_losses:
            replace(base, kd_loss=loss).resolved()
        return replace(self, base=base, out=self.out or str(Path(base.artifacts) / f"sweep-{base.dataset}"))

    def to_options(self) -> dict[str, Any]:
        """The sweep's settings as `kdc sweep --config FILE.yaml` takes them (the grids as lists)."""
        grid = {"temperature": list(self.temperatures), "alpha": list(self.alphas), "beta": list(self.betas),
                "kd-loss": list(self.kd_losses)}  # fmt: skip
        base = self.base.to_options(leave_out=sweep_settings(GRID) + sweep_settings(COMPRESS_ONLY))
        out = str(Path(self.out).absolute()) if self.out else None
        return {**base, **grid, "seeds": self.seeds, "out": out}

    def per_student(self) -> list[tuple[str, "SweepConfig"]]:
        """The sweep of each student, resolved: one student sweeps into --out itself; several, each into --out/STUDENT."""
        cfg = self.resolved()
        if not cfg.base.several:
            return [(cfg.base.student, cfg)]  # type: ignore[list-item]
        # A pruned student (pruned50) sweeps as the only student of its sub-sweep: its name says the ratio.
        return [(s, replace(cfg, base=replace(cfg.base, student=s, prune=None), out=str(Path(cfg.out) / s))) for s in cfg.base.students]  # type: ignore[arg-type]

    def cells(self) -> list[Cell]:
        """Every (T, alpha, beta, KD loss) of the grid."""
        return list(itertools.product(self.temperatures, self.alphas, self.betas, self.kd_losses))

    def seed_list(self) -> list[int]:
        """The seeds the sweep trains with."""
        return [self.base.seed + i for i in range(self.seeds)]
