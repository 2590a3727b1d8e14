"""Python subscriber throughput: the `cassini` package against a Rust publisher, and nats.py
against nats-server in the same run.

    python bindings/python/bench/throughput.py [--messages 1000000] [--size 64]

Cassini: a `cassini serve` (CASSINI_BIN, else target/release/cassini) on port 0 with
certificates from `cassini certs init`, the publisher `cassini pub TOPIC -c N` (the Rust
client), and a Python subscriber iterating `async for msg in sub` and reading `msg.payload`.
NATS: `nats-server` (on PATH) on a free port, a publisher writing the NATS protocol to a TCP
socket from another process (as fast as the server reads), and a nats.py subscriber reading
`msg.data` in its callback. Both subscribers count until every message arrived or was
reported dropped; the rate is messages received per second from the first to the last.
Build the extension in release for this (`pip install ./bindings/python`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cassini

REPO = Path(__file__).resolve().parents[3]
BIN = os.environ.get("CASSINI_BIN", str(REPO / "target" / "release" / "cassini"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cassini(tmp: Path) -> tuple[subprocess.Popen, int]:
    subprocess.run([BIN, "certs", "init", "--dir", str(tmp / "certs"), "--client", "bench"],
                   check=True, capture_output=True)
    log = tmp / "broker.log"
    proc = subprocess.Popen(
        [BIN, "serve", "--log-format", "json", "--listen", "127.0.0.1:0",
         "--certs", str(tmp / "certs")],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=tmp,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "cassini listening":
                return proc, int(fields["addr"].rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"broker did not start: {log.read_text(errors='replace')}")


async def bench_cassini(messages: int, size: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker, port = start_cassini(tmp)
        try:
            certs = tmp / "certs"
            client = await cassini.connect(
                f"127.0.0.1:{port}", ca=str(certs / "ca.crt"),
                cert=str(certs / "client-bench.crt"), key=str(certs / "client-bench.key"),
                subscription_buffer=8192,
            )
            sub = await client.subscribe("bench.t", max_queued_messages=1_000_000,
                                         max_queued_bytes=1 << 30)
            publisher = await asyncio.create_subprocess_exec(
                BIN, "pub", "bench.t", "x" * size, "-c", str(messages),
                "-s", f"127.0.0.1:{port}", "--certs", str(certs), "--name", "bench",
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            received = 0
            first = last = 0.0
            async def receive() -> None:
                nonlocal received, first, last
                async for msg in sub:
                    msg.payload
                    if received == 0:
                        first = time.perf_counter()
                    received += 1
                    if received >= messages or (received % 4096 == 0
                                               and received + sub.gaps >= messages):
                        break
                last = time.perf_counter()
            await asyncio.wait_for(receive(), 300)
            gaps = sub.gaps
            await publisher.wait()
            sub.close()
            await client.close()
        finally:
            broker.terminate()
            broker.wait(10)
    return figures(received, gaps, first, last)


def figures(received: int, dropped: int, first: float, last: float) -> dict:
    """One broker's result: what arrived between the first and the last message, and how fast."""
    return {"received": received, "dropped": dropped, "seconds": last - first,
            "rate": received / (last - first) if last > first else 0.0}


def nats_publisher(port: int, messages: int, size: int) -> None:
    """Another process: the NATS protocol straight to a socket, in large writes."""
    one = b"PUB bench.t %d\r\n" % size + b"x" * size + b"\r\n"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.recv(4096)  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        chunk = 4096
        sent = 0
        while sent < messages:
            n = min(chunk, messages - sent)
            s.sendall(one * n)
            sent += n
        s.sendall(b"PING\r\n")
        s.recv(4096)


async def bench_nats(messages: int, size: int) -> dict:
    import nats

    server_bin = shutil.which("nats-server")
    if server_bin is None:
        return {"skipped": "nats-server not on PATH"}
    port = free_port()
    server = subprocess.Popen([server_bin, "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("nats-server did not start")
                await asyncio.sleep(0.02)
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        received = 0
        first = last = 0.0
        done = asyncio.get_running_loop().create_future()

        async def handler(msg) -> None:
            nonlocal received, first, last
            msg.data
            if received == 0:
                first = time.perf_counter()
            received += 1
            if received >= messages and not done.done():
                last = time.perf_counter()
                done.set_result(None)

        sub = await nc.subscribe("bench.t", cb=handler, pending_msgs_limit=messages,
                                 pending_bytes_limit=1 << 30)
        await nc.flush()
        publisher = subprocess.Popen([sys.executable, __file__, "--nats-publisher", str(port),
                                      "--messages", str(messages), "--size", str(size)])
        try:
            await asyncio.wait_for(asyncio.shield(done), 120)
        except asyncio.TimeoutError:
            last = time.perf_counter()
        dropped = messages - received
        publisher.wait(60)
        await sub.unsubscribe()
        await nc.close()
    finally:
        server.terminate()
        server.wait(10)
    return figures(received, dropped, first, last)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--nats-publisher", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nats_publisher:
        nats_publisher(args.nats_publisher, args.messages, args.size)
        return
    results = {
        "cassini": asyncio.run(bench_cassini(args.messages, args.size)),
        "nats.py": asyncio.run(bench_nats(args.messages, args.size)),
    }
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:8} skipped: {r['skipped']}")
            continue
        print(f"{name:8} {r['rate']:>12,.0f} msg/s  ({r['received']:,} received, "
              f"{r['dropped']:,} dropped, {r['seconds']:.2f} s)")
    c, n = results["cassini"], results["nats.py"]
    if "rate" in c and "rate" in n and n["rate"]:
        print(f"cassini / nats.py: {c['rate'] / n['rate']:.2f}")


if __name__ == "__main__":
    main()
