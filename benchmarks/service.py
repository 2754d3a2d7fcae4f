"""A real runbroker server for the service benchmarks (B9-B11): uvicorn on loopback.

:class:`Served` starts ``python -m uvicorn benchmarks.service:app --factory`` in a process of
its own (``workers`` worker processes, as a deployment runs it) serving the SQLite catalog at
``db``, and waits until it answers. The app is :func:`runbroker.server.build_app` unchanged;
:func:`app` only opens the catalog named by ``$RUNBROKER_BENCH_DB`` in each worker.

With ``$RUNBROKER_BENCH_PROFILE`` set to a folder, each worker runs under cProfile and writes
``worker-PID.prof`` there when it stops: how the server-side figures of the report were made.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import runbroker
from runbroker.testing.server import free_port, wait_until_up

__all__ = ["API_KEY", "Served", "app"]

API_KEY = "bench-key"
_ROOT = Path(__file__).resolve().parent.parent


def app() -> Any:
    """The ASGI app of one worker (uvicorn's ``--factory`` calls it)."""
    from runbroker.server import Settings, build_app

    profile = os.environ.get("RUNBROKER_BENCH_PROFILE")
    dump = _profile(Path(profile)) if profile else None
    cat = runbroker.open(os.environ["RUNBROKER_BENCH_DB"])
    access = os.environ.get("RUNBROKER_BENCH_ACCESS")  # an access configuration file
    served = build_app(cat, Settings(api_key=API_KEY, access=access))
    if dump is not None:
        # At shutdown, not atexit: uvicorn ends by raising the signal it caught again.
        served.router.on_shutdown.append(dump)
    return served


def _profile(folder: Path) -> Callable[[], None]:
    """Profile the event loop's thread and every thread started later (the routes run in
    the loop and in its thread pool); the function returned writes their merged stats."""
    import cProfile
    import pstats
    import threading

    profilers = [cProfile.Profile()]
    # Patched below run(), which thread classes (anyio's workers) override.
    bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def profiled(thread: threading.Thread) -> None:
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.runcall(bootstrap, thread)

    def dump() -> None:
        profilers[0].disable()
        stats = pstats.Stats(profilers[0])
        for profiler in profilers[1:]:
            profiler.disable()
            profiler.create_stats()
            stats.add(profiler)
        folder.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(folder / f"worker-{os.getpid()}.prof")

    threading.Thread._bootstrap_inner = profiled  # type: ignore[attr-defined]
    profilers[0].enable()
    return dump


class Served:
    """``with Served(db, workers=2) as server: runbroker.open(server.url, api_key=API_KEY)``.

    ``db``: a catalog's path or URL; ``access``: an access configuration file, which turns
    on access control (the server's own key still sees everything)."""

    def __init__(self, db: Path | str, workers: int = 1, access: Path | None = None) -> None:
        self.db = db
        self.workers = workers
        self.access = access
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Served:
        src = str(Path(runbroker.__file__).resolve().parent.parent)
        path = os.pathsep.join([str(_ROOT), src, os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, RUNBROKER_BENCH_DB=str(self.db), PYTHONPATH=path)
        if self.access is not None:
            env["RUNBROKER_BENCH_ACCESS"] = str(self.access)
        args = [
            sys.executable, "-m", "uvicorn", "benchmarks.service:app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, env=env, cwd=_ROOT)
        wait_until_up(self.url, timeout=60, process=self.process)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
