"""Where the command line writes: results to stdout, progress and errors to stderr, an error as one red line, and
how a command's failures become that line (user_errors)."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.markup import escape

from kdcompress.core.errors import KdcError

# Piped output (logs, CI) gets a fixed comfortable width instead of Rich's 80 columns (COLUMNS is not read here:
# pytest-xdist sets it to 80 in its workers, and a shell rarely exports it).
stdout = Console(width=None if sys.stdout.isatty() else 140)
stderr = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Say what is wrong in one `error:` line on stderr and leave with exit code `code`, without a traceback."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print a line of plain text (paths, run and class names), never read as Rich markup: the one way commands
    print what they did, so that a path such as art/x[/]y is shown as it is and cannot fail a finished command."""
    console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), highlight=False, soft_wrap=True)


def user_errors(interrupted: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a KdcError (or a failed file operation) into one red line on stderr and exit code 1, without a traceback.

    interrupted is what Ctrl-C leaves behind, said when the command is interrupted (exit code 130).
    """

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except KdcError as exc:
                fail(str(exc))
            except OSError as exc:  # a full disk, a read-only or vanished folder: the library has cleaned up
                where = f" {exc.filename}" if exc.filename else ""
                fail(f"cannot write or read{where}: {exc.strerror or exc}. Free some space or pick a writable folder, then retry")
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the library cleaned up on the way out
                signal_name = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
                stderr.print(f"[bold red]interrupted[/] ({signal_name}): {escape(interrupted)}", highlight=False)
                raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
            except (typer.Exit, typer.Abort):  # click's own exits are RuntimeErrors: let them through untouched
                raise
            except MemoryError:  # under a memory limit (ulimit -v) or on a full machine
                fail(OUT_OF_MEMORY_SAID)
            except ImportError as exc:  # a library that cannot load: often a memory limit too small to map it
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]
                fail(f"a library could not be loaded ({first}): raise the memory limit (ulimit -v) if one is set, "
                     f"otherwise reinstall kdcompress (pip install -e .)")  # fmt: skip
            except RuntimeError as exc:  # under torchrun: a collective whose peer process has died
                if any(sign in str(exc) for sign in OUT_OF_MEMORY):  # a runtime's own allocation failure (onnxruntime's Fail)
                    fail(OUT_OF_MEMORY_SAID)
                if "torch" not in sys.modules:  # no torch was loaded (predict, benchmark): no collective to ask about
                    _unexpected(exc)
                from kdcompress.core.world import launched
                from kdcompress.train.collectives import PEER_FAILED, lost_peer

                if not lost_peer(exc):
                    _unexpected(exc)
                fail(f"process {launched().rank} stopped: another process failed first (its error is above)", PEER_FAILED)
            except Exception as exc:  # noqa: BLE001 - a library's own failure under a memory limit; a bug otherwise
                _unexpected(exc)

        return wrapper

    return decorate


OUT_OF_MEMORY = ("Failed to allocate memory", "std::bad_alloc", "DefaultCPUAllocator: can't allocate memory")
OUT_OF_MEMORY_SAID = "out of memory: free memory, or raise the limit (ulimit -v) or use smaller settings, then retry"


def _unexpected(exc: BaseException) -> None:
    """An exception kdc does not expect. Under a memory limit (ulimit -v) libraries fail in their own ways (protobuf's
    'Failed to serialize proto', OpenBLAS, a C++ allocator): that is said in one line naming the limit. Anywhere
    else it is a bug, and its traceback is what a report needs: it is raised as it is."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        raise exc
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:120]
    fail(f"{type(exc).__name__}{f': {first}' if first else ''}, under a memory limit of {limit / 2**20:.0f} MB (ulimit -v): "
         f"raise the limit or free memory, then retry")  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stopping), raised where Ctrl-C's KeyboardInterrupt would be.

    Every cleanup that Ctrl-C runs (staging folders, candidates, locks) runs for it too.
    """


def terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def tolerant_output() -> None:
    """Characters the terminal's encoding cannot show (an emoji class name under PYTHONIOENCODING=ascii) become '?'."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
