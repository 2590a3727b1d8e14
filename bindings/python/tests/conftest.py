"""Fixtures: certificates from `cassini certs init` and real `cassini serve` processes.

The broker binary is `$CASSINI_BIN`, else target/debug/cassini (`cargo build -p cassini`).
Every broker listens on 127.0.0.1 port 0 (a restart reuses its port and data directory) and
reports its address in its JSON log; all are stopped at the end of the session.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, List, Optional

import pytest

import cassini

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("CASSINI_BIN", str(REPO / "target" / "debug" / "cassini"))


def run_async(fn):
    """Runs an async test in its own event loop."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


async def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Waits until `check()` holds, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def run_cli(*args: str) -> str:
    done = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"cassini {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout + done.stderr


@dataclass
class CertDir:
    path: Path

    def identity(self, name: str) -> dict:
        """`cassini.connect` keyword arguments for client `name`."""
        return {
            "ca": str(self.path / "ca.crt"),
            "cert": str(self.path / f"client-{name}.crt"),
            "key": str(self.path / f"client-{name}.key"),
        }


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertDir:
    if not Path(BIN).exists():
        pytest.fail(f"no broker binary at {BIN}: run `cargo build -p cassini` or set CASSINI_BIN")
    d = tmp_path_factory.mktemp("certs")
    run_cli("certs", "init", "--dir", str(d), "--client", "alice", "--client", "bob")
    return CertDir(d)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> CertDir:
    """An unrelated CA with a client `alice` of its own."""
    d = tmp_path_factory.mktemp("other-ca")
    run_cli("certs", "init", "--dir", str(d), "--client", "alice")
    return CertDir(d)


class Broker:
    def __init__(self, certs: CertDir, workdir: Path, args: List[str]):
        self.certs = certs
        self.workdir = workdir
        self.args = args
        self.port: Optional[int] = None
        self.starts = 0
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.workdir / f"broker-{self.starts}.log"
        listen = f"127.0.0.1:{self.port or 0}"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [BIN, "serve", "--log-format", "json", "--listen", listen,
                 "--certs", str(self.certs.path), *self.args],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("message") == "cassini listening":
                    return int(fields["addr"].rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        raise RuntimeError(f"broker did not report its address in {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def start_broker(certs, tmp_path_factory):
    """Starts a broker with extra `serve` arguments; every one stops at the end."""
    started: List[Broker] = []

    def start(*args: str) -> Broker:
        b = Broker(certs, tmp_path_factory.mktemp("broker"), list(args))
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def broker(start_broker) -> Broker:
    """A broker with every setting at its default."""
    return start_broker()


_counter = itertools.count()


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test uses."""
    return f"py.t{next(_counter)}x{uuid.uuid4().hex[:8]}"


async def connect(broker: Broker, name: str = "alice", **options) -> cassini.Client:
    return await cassini.connect(broker.address, **broker.certs.identity(name), **options)
