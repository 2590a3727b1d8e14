"""The tour of the README in Python: publish and subscribe, a service and a request.

    python bindings/python/examples/hello.py [ADDRESS] [CERT_DIR] [NAME]

against a running broker (`cassini serve`, which creates development certificates in
`certs/`): ADDRESS defaults to 127.0.0.1:7700, CERT_DIR to certs, NAME to dev. Exits 0 when
every step worked.
"""

import asyncio
import sys

import cassini


async def main(address: str, cert_dir: str, name: str) -> None:
    async with await cassini.connect(address, ca=f"{cert_dir}/ca.crt",
                                     cert=f"{cert_dir}/client-{name}.crt",
                                     key=f"{cert_dir}/client-{name}.key") as client:
        print(f"connected as {client.identity}, {client.state}")

        sub = await client.subscribe("demo.>", ack=False, overflow="drop-oldest")
        await client.publish("demo.hello", b"hi", headers={"trace": "1"})
        msg = await sub.next(timeout=5.0)
        print(f"{msg.topic} #{msg.sequence}: {msg.payload!r} {msg.headers}")

        async def echo(responder: cassini.Responder) -> None:
            async for request in responder:
                await request.respond(b"echo: " + request.payload)

        service = asyncio.create_task(echo(await client.serve("svc.echo")))
        reply = await client.request("svc.echo", b"ping", timeout=2.0)
        print(f"reply: {reply.payload!r}")
        service.cancel()

        try:
            await client.request("svc.nobody", b"ping", timeout=2.0)
        except cassini.NoResponders as error:
            print(f"as expected: {error}")


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 3
    asyncio.run(main(args[0] or "127.0.0.1:7700", args[1] or "certs", args[2] or "dev"))
