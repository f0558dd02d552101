"""Start a run in several processes on this machine (torchrun --standalone), after refusing in one line what each would refuse."""

from __future__ import annotations

import os
from typing import Any, Callable

from kdcompress.core.errors import KdcError
from kdcompress.core.reporter import Reporter
from kdcompress.core.world import usable_cores
from kdcompress.train.collectives import PEER_FAILED


def preflight(config: Any, processes: int) -> None:
    """Refuse, before torchrun starts processes processes, what each of them would refuse (config: CompressConfig).

    The settings' ranges, the model names, a data folder that is not there, a batch that does not split
    evenly, and more processes than GPUs: one line here instead of one per process.
    """
    import torch

    from kdcompress.data.specs import resolve_spec
    from kdcompress.train.accel import resolve_device
    from kdcompress.train.models import resolve_model_name

    cfg = config.resolved()
    resolve_model_name(cfg.teacher)
    for student in cfg.named_students:
        resolve_model_name(student)
    if resolve_spec(cfg.dataset).needs_data_dir and cfg.data_dir is not None and not os.path.isdir(cfg.data_dir):
        raise KdcError(f"data folder not found: {cfg.data_dir}")
    for flag, batch in (("--batch-size", cfg.batch_size), ("--teacher-batch-size", cfg.teacher_batch_size)):
        if batch is not None and batch % processes:
            raise KdcError(f"{flag} {batch} does not split evenly over {processes} processes: pass a multiple of {processes}")
    gpus = torch.cuda.device_count()
    if resolve_device(cfg.device) == "cuda":
        if processes > gpus:
            raise KdcError(f"--nproc {processes} asks for a process per GPU, and torch sees {gpus}: pass --nproc {gpus} or less")
    elif processes > usable_cores():
        cores = usable_cores()
        raise KdcError(
            f"--nproc {processes} asks for more processes than the {cores} CPU core(s) this process may use; each "
            f"holds a copy of the data and the models: pass --nproc {cores} or less"
        )


def process_threads(processes: int) -> int:
    """Threads per process when kdc starts several on this machine: its usable cores shared out, at least one."""
    return max(1, usable_cores() // processes)


def launch(processes: int, argv: list[str]) -> None:
    """Run `python -m kdcompress argv` in processes processes on this machine, through torchrun (`--standalone`).

    The same as `torchrun --standalone --nproc-per-node N -m kdcompress ...`; torchrun's own report of a
    failed process (a traceback of the launcher) is replaced by one KdcError line, after the failed
    process has printed its own error.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in ("torch.distributed.run", "torch.distributed.elastic"):  # their notices and failure report: ours instead
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Each process gets its share of this machine's cores as its threads (torchrun would give each one thread); an
    # OMP_NUM_THREADS the user set is theirs to keep.
    os.environ.setdefault("OMP_NUM_THREADS", str(process_threads(processes)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "--module", "kdcompress", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        # The one that failed on its own: the others were stopped by a signal, or exited PEER_FAILED after it.
        # torchrun may stop the one that failed on its own before it has exited, so it can be missing here.
        exits = {rank: failure for rank, failure in exc.failures.items() if failure.exitcode > 0 and failure.exitcode != PEER_FAILED}
        if not exits:
            raise KdcError(f"one of the {processes} processes failed (its error is above) and torchrun stopped the others") from None
        rank, failure = min(exits.items(), key=lambda item: item[1].timestamp)
        raise KdcError(
            f"process {rank} of {processes} failed (exit code {failure.exitcode}; its error is above) and torchrun stopped the others"
        ) from None


def relaunched(nproc: int, base: Any, argv: list[str], reporter: Reporter, check: Callable[[], Any] | None = None) -> bool:
    """--nproc N > 1: refuse here what can be refused before any process starts (preflight of the settings the run
    will use, --from-sweep's included; then check), then run this same command line (argv, kdc's own arguments) in N
    processes under torchrun and return True once they finish. False, doing nothing, for --nproc 1."""
    from kdcompress.core.world import launched
    from kdcompress.runs.from_sweep import with_sweep

    if nproc == 1:
        return False
    if launched().size > 1:
        raise KdcError("--nproc starts torchrun itself: drop it when kdc already runs under torchrun")
    preflight(with_sweep(base), nproc)
    if check is not None:
        check()
    argv = without_nproc(argv)
    if argv[:1] not in (["compress"], ["sweep"]):  # called as a library (a test runner's argv): nothing to re-run
        raise KdcError("--nproc re-runs the kdc command line it was given: use it from `kdc`, or call torchrun yourself")
    threads = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', process_threads(nproc))}"
    reporter.info(f"starting {nproc} processes with torchrun (--standalone), each with {threads}")
    launch(nproc, argv)
    return True


def without_nproc(argv: list[str]) -> list[str]:
    """The command line without its --nproc option: what each process started by torchrun runs."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
