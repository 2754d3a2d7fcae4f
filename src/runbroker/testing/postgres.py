"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary folder.

Used by runbroker's own tests and benchmarks. Set ``RUNBROKER_TEST_POSTGRES`` to a SQLAlchemy
URL (``postgresql+psycopg://user@host/db``) to use an existing server instead; each test then
gets its own schema in that database.

The cluster listens on TCP at 127.0.0.1 and on a Unix-domain socket in its folder. The URL
:meth:`Cluster.start` returns uses TCP, the way to a catalog on another machine;
``RUNBROKER_TEST_POSTGRES_SOCKET=1`` makes it the socket's (libpq's way to a server on the
same machine). Neither is faster throughout: on the benchmark machine the socket stored small
runs 5-10 % faster and single events 15-35 % slower, and read as fast.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

ENV = "RUNBROKER_TEST_POSTGRES"
SOCKET_ENV = "RUNBROKER_TEST_POSTGRES_SOCKET"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(
            f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql); "
            f"or set {ENV} to the URL of an existing server"
        )
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Start with :meth:`start`, which returns the URL of an empty database; then :meth:`stop`.

    PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user.
    The tests' cluster runs with ``fsync=off`` (nothing in it must survive a crash, and the
    suite runs faster); ``durable=True`` keeps PostgreSQL's default durability (fsync, full
    page writes), as the benchmarks use it. ``unix=True`` (default: whether
    ``$RUNBROKER_TEST_POSTGRES_SOCKET`` is ``1``) makes :meth:`start` return :attr:`socket_url`
    rather than :attr:`tcp_url`.

    Example:
        >>> cluster = Cluster(unix=True)
        >>> url = cluster.start()  # doctest: +SKIP
        >>> cluster.url == cluster.socket_url, "?host=" in cluster.url
        (True, True)
        >>> cluster.tcp_url.startswith("postgresql+psycopg://runbroker@127.0.0.1:")
        True
        >>> cluster.stop()
    """

    def __init__(self, durable: bool = False, unix: bool | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="runbroker-pg-"))
        self.port = _free_port()
        self.user: str | None = "postgres" if os.geteuid() == 0 else None
        self.durable = durable
        self.unix = os.environ.get(SOCKET_ENV, "") == "1" if unix is None else unix

    @property
    def socket_dir(self) -> Path:
        """The folder that holds the server's Unix-domain socket."""
        return self.folder / "sock"

    @property
    def socket_url(self) -> str:
        """The database's URL through the Unix-domain socket."""
        return f"postgresql+psycopg://runbroker@/runbroker_test?host={self.socket_dir}&port={self.port}"

    @property
    def tcp_url(self) -> str:
        """The database's URL through TCP on 127.0.0.1."""
        return f"postgresql+psycopg://runbroker@127.0.0.1:{self.port}/runbroker_test"

    @property
    def url(self) -> str:
        """The URL :meth:`start` returns: :attr:`tcp_url` or :attr:`socket_url`."""
        return self.socket_url if self.unix else self.tcp_url

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> str:
        data, sock = self.folder / "data", self.socket_dir
        sock.mkdir()
        if self.user:
            shutil.chown(self.folder, self.user)
            shutil.chown(sock, self.user)
            self.folder.chmod(0o755)
        self._run(
            _binary("initdb"), "-D", str(data), "-U", "runbroker", "--auth=trust",
            "-E", "UTF8", "--locale=C.UTF-8",
        )  # fmt: skip
        options = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(
            _binary("pg_ctl"), "-D", str(data), "-o", options,
            "-l", str(self.folder / "log"), "-w", "start",
        )  # fmt: skip
        with psycopg.connect(
            host=str(sock), port=self.port, user="runbroker", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE runbroker_test")
        return self.url

    def stop(self) -> None:
        try:
            if (self.folder / "data" / "postmaster.pid").exists():  # started, not yet stopped
                self._run(
                    _binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def new_schema(url: str, name: str, *, fresh: bool = True) -> str:
    """Create schema ``name`` in the database at ``url``; return a URL that uses it.

    ``fresh=False`` keeps the schema if it exists (several processes sharing one catalog).
    """
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{name}"')
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{name}"
