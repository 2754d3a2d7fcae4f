"""Servers of one's own for tests: an ASGI app under uvicorn in a thread of the test's process
(:class:`ThreadServer`: its logs and metrics are the test's to see), or ``runbroker serve`` as
a user runs it, in a process of its own that a test may kill (:class:`ServeCommand`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .server import free_port, wait_until_up

__all__ = ["ServeCommand", "ThreadServer"]


class ThreadServer:
    """``with ThreadServer(app) as server:`` serves ``app`` at ``server.url`` until the block
    ends (``port``: a port of your choosing, default a free one).

    Example:
        >>> from fastapi import FastAPI
        >>> import httpx
        >>> app = FastAPI()
        >>> _ = app.get("/hello")(lambda: "hi")
        >>> with ThreadServer(app) as server:
        ...     httpx.get(server.url + "/hello").json()
        'hi'
    """

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start at {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> ThreadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServeCommand:
    """``runbroker serve ARGS --port PORT`` run in ``folder`` (``env`` added to this
    process's environment), started at once; its output goes to :attr:`out`.

    Example:
        >>> runbroker.open(tmp_path / "runs.db").close()
        >>> served = ServeCommand(tmp_path, "runs.db", "--api-key", "k")
        >>> len(runbroker.open(served.url, api_key="k", cache=False))
        0
        >>> served.stop()
    """

    def __init__(
        self, folder: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.folder, self.args = Path(folder), args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = self.folder / f"serve-{self.port}.out"
        src = str(Path(__file__).resolve().parents[2])  # this checkout's code
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join([src, self.env.get("PYTHONPATH", "")])
        self.start()

    def start(self) -> ServeCommand:
        """Start the command (again, after :meth:`stop` or :meth:`kill`: the same port)."""
        command = [sys.executable, "-m", "runbroker.cli", "serve", *self.args]
        with self.out.open("a") as out:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)],
                cwd=self.folder,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_up(self.url, timeout=120, process=self.process)
        except BaseException:
            self.kill()  # a server that did not come up is not left running
            raise
        return self

    def output(self) -> str:
        return self.out.read_text()

    def kill(self) -> None:
        """``kill -9``: no answer in progress is finished."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
