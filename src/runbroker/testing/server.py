"""Real runbroker servers for tests: uvicorn on loopback, in a process of its own.

:class:`ServerProcess` starts ``python -m runbroker.testing.server`` and waits until it
answers. That process serves many catalogs at once, one per URL prefix: ``/c/NAME`` is the
SQLite catalog ``ROOT/NAME/runs.db`` (``/c/pg-NAME``: the schema ``served_NAME`` of the PostgreSQL
database in ``$RUNBROKER_TEST_POSTGRES``, shared by every server process given that database:
name it afresh per test), made at its first request. So the whole API suite
runs against one server started once per test run, each test with a fresh empty catalog of
its own (``runbroker.open(server.url + "/c/" + name, api_key=server.api_key)``).

Everything below each prefix is :func:`runbroker.server.build_app` unchanged: the dispatcher
only picks the app.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx

__all__ = ["ServerProcess", "free_port", "wait_until_up"]

# Catalog apps kept open at once in the test server (each holds a store and its connections).
_OPEN_APPS = 64


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url/healthz`` answers; fail naming the URL (and the process's exit code)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no server answered at {url} within {timeout} s")


class Catalogs:
    """An ASGI app that serves a catalog per ``/c/NAME`` prefix, made on first use."""

    def __init__(self, root: Path, api_key: str, postgres: str | None) -> None:
        self.root = root
        self.api_key = api_key
        self.postgres = postgres
        self.apps: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def _app(self, name: str) -> Any:
        import runbroker
        from runbroker.server import Settings, build_app

        with self.lock:
            if name in self.apps:
                self.apps.move_to_end(name)
                return self.apps[name]
            if name.startswith("pg-"):
                from runbroker.testing.postgres import new_schema

                if not self.postgres:
                    raise LookupError("this test server has no PostgreSQL database")
                # Kept if it exists: server processes given one database share the catalog.
                # (PostgreSQL keeps names starting with pg_ for itself.)
                schema = new_schema(
                    self.postgres, "served_" + name[3:].replace("-", "_"), fresh=False
                )
                cat = runbroker.open(schema)
            else:
                (self.root / name).mkdir(exist_ok=True)
                cat = runbroker.open(self.root / name / "runs.db", create=True)
            public = name.startswith("public-")
            app = build_app(cat, Settings(api_key=self.api_key, public=public))
            self.apps[name] = app
            while len(self.apps) > _OPEN_APPS:
                _, old = self.apps.popitem(last=False)
                old.state.service.catalog.close()
            return app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        path = scope["path"]
        if path == "/healthz":
            await _plain(send, 200, b"ok")
            return
        parts = path.split("/", 3)
        if len(parts) < 3 or parts[1] != "c" or not parts[2]:
            await _plain(send, 404, b"ask under /c/NAME/")
            return
        name = parts[2]
        from starlette.concurrency import run_in_threadpool

        app = await run_in_threadpool(self._app, name)
        prefix = f"/c/{name}"
        await app(dict(scope, root_path=scope.get("root_path", "") + prefix), receive, send)


async def _plain(send: Any, status: int, text: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": text})


class ServerProcess:
    """A test server in a process of its own, serving the catalogs of :class:`Catalogs`.

    Example:
        >>> server = ServerProcess(tmp_path).start()
        >>> cat = runbroker.open(server.catalog_url("t1"), api_key=server.api_key, cache=False)
        >>> len(cat)
        0
        >>> server.stop()
    """

    def __init__(
        self, root: Path, *, api_key: str = "test-key", postgres: str | None = None
    ) -> None:
        self.root = Path(root)
        self.api_key = api_key
        self.postgres = postgres
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def catalog_url(self, name: str) -> str:
        return f"{self.url}/c/{name}"

    def start(self) -> ServerProcess:
        env = dict(os.environ, RUNBROKER_API_KEY=self.api_key)
        if self.postgres:
            env["RUNBROKER_TEST_POSTGRES"] = self.postgres
        args = [sys.executable, "-m", "runbroker.testing.server", str(self.root), str(self.port)]
        self.process = subprocess.Popen(args, env=env)
        wait_until_up(self.url, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="runbroker's test server (many catalogs)")
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    app = Catalogs(
        args.root, os.environ["RUNBROKER_API_KEY"], os.environ.get("RUNBROKER_TEST_POSTGRES")
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
