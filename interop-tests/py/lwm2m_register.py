#!/usr/bin/env python3
"""An LwM2M 1.1 device on aiocoap (PyPI) whose registration carries the object lists it is
given, as a device writing unusual but valid CoRE link format (or none) would. One client
context, so every request leaves from the same UDP port, as a device's would.

Usage: lwm2m_register.py HOST PORT ENDPOINT GOOD BAD UPDATE. Registers with the object list
GOOD, sends an update with BAD, registers again with BAD, updates with UPDATE, de-registers,
and prints one line per answer: `register CODE LOCATION`, `update-bad CODE`,
`register-bad CODE`, `update CODE`, `deregister CODE`.
"""

import asyncio
import sys

from aiocoap import DELETE, POST, Context, Message

LINK_FORMAT = 40


async def main(host, port, endpoint, good, bad, update):
    context = await Context.create_client_context()
    base = f"coap://{host}:{port}"

    async def request(uri, payload, code=POST):
        message = Message(code=code, uri=base + uri, payload=payload.encode())
        if payload:
            message.opt.content_format = LINK_FORMAT
        return await asyncio.wait_for(context.request(message).response, 20)

    register = f"/rd?ep={endpoint}&lt=60&lwm2m=1.1&b=U"
    registered = await request(register, good)
    location = "/".join(registered.opt.location_path)
    print("register", registered.code.dotted, location, flush=True)

    answer = await request("/" + location, bad)
    print("update-bad", answer.code.dotted, flush=True)
    answer = await request(register, bad)
    print("register-bad", answer.code.dotted, flush=True)
    answer = await request("/" + location, update)
    print("update", answer.code.dotted, flush=True)

    gone = await request("/" + location, "", code=DELETE)
    print("deregister", gone.code.dotted, flush=True)
    await context.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
