"""Every example in bindings/python/examples runs as a program against a real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_hello(broker):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "hello.py"), broker.address, str(broker.certs.path),
         "alice"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reply: b'echo: ping'" in done.stdout
    assert "no responders on svc.nobody" in done.stdout
