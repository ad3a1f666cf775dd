"""A real PostgreSQL for the tests: initdb in a temporary folder, the server on 127.0.0.1 only, stopped by the PID
it writes (postmaster.pid). PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def available() -> bool:
    return all(shutil.which(tool) for tool in ("initdb", "pg_ctl")) and (os.geteuid() != 0 or shutil.which("runuser"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="acla-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.pid: int | None = None

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(_as_postgres(["initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data)]),
                       check=True, capture_output=True, timeout=120)
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
                                     "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return self

    def create_database(self, name: str) -> str:
        subprocess.run(_as_postgres(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name]),
                       check=True, capture_output=True, timeout=60)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)  # smart shutdown, by the PID the server wrote
                deadline = time.time() + 30
                while time.time() < deadline and Path(f"/proc/{self.pid}").exists():
                    time.sleep(0.2)
            except ProcessLookupError:
                pass
            self.pid = None
        shutil.rmtree(self.folder, ignore_errors=True)
