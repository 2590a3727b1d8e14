"""Fixtures: certificates from `cassini certs init`, and real `cassini serve` processes.

The broker binary is `$CASSINI_BIN` (default: target/debug/cassini, built by
`cargo build -p cassini`). Every broker listens on 127.0.0.1 port 0 and reports its address in
its JSON log; it is stopped with SIGTERM at the end of its scope.
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

import pytest

from cassini_wire import Identity

REPO = Path(__file__).resolve().parent.parent
BIN = os.environ.get("CASSINI_BIN", str(REPO / "target" / "debug" / "cassini"))


def spec(fn):
    """Runs an async test in its own event loop."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def run_cli(*args: str) -> str:
    done = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"cassini {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout + done.stderr


@dataclass
class CertDir:
    path: Path

    def identity(self, name: str) -> Identity:
        return Identity(
            ca=str(self.path / "ca.crt"),
            cert=str(self.path / f"client-{name}.crt"),
            key=str(self.path / f"client-{name}.key"),
        )


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> CertDir:
    """`cassini certs init --dir TMP --client alice --client bob`."""
    if not Path(BIN).exists():
        pytest.fail(f"no broker binary at {BIN}: run `cargo build -p cassini` or set CASSINI_BIN")
    d = tmp_path_factory.mktemp("certs")
    run_cli("certs", "init", "--dir", str(d), "--client", "alice", "--client", "bob")
    return CertDir(d)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory) -> CertDir:
    """A second, unrelated CA made the same way, with a client `alice` of its own."""
    d = tmp_path_factory.mktemp("other-ca")
    run_cli("certs", "init", "--dir", str(d), "--client", "alice")
    return CertDir(d)


class Broker:
    def __init__(self, certs: CertDir, workdir: Path, args: list[str], env: dict[str, str]):
        self.certs = certs
        self.log_path = workdir / "broker.log"
        self.log = open(self.log_path, "wb")
        full_env = {**os.environ, **env}
        self.proc = subprocess.Popen(
            [BIN, "serve", "--log-format", "json", "--listen", "127.0.0.1:0",
             "--certs", str(certs.path), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env, cwd=workdir,
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                fields = entry.get("fields", {})
                if fields.get("message") == "cassini listening":
                    return int(fields["addr"].rsplit(":", 1)[1])
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        raise RuntimeError(f"broker did not report its address within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="session")
def start_broker(certs, tmp_path_factory):
    """Starts a broker with extra `serve` arguments and environment; all stop at the end."""
    started: list[Broker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Broker:
        b = Broker(certs, tmp_path_factory.mktemp("broker"), list(args), env or {})
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.fixture(scope="session")
def broker(start_broker) -> Broker:
    """The broker with every setting at its default."""
    return start_broker()


_counter = itertools.count()


@pytest.fixture
def topic() -> str:
    """A topic prefix no other test uses."""
    return f"conf.t{next(_counter)}x{uuid.uuid4().hex[:8]}"
