#!/usr/bin/env python3
"""An LwM2M 1.1 device that only reports, on aiocoap (PyPI) with its SenML CBOR written by
cbor2 (PyPI, in canonical form: the shortest float that holds each value). One client
context, so every request leaves from the same UDP port, as a device's would.

Usage: lwm2m_send.py HOST PORT ENDPOINT. Registers, sends /3303/0 in SenML CBOR, then a new
temperature in SenML JSON, de-registers, and prints one line per answer:
`register CODE LOCATION`, `send-cbor CODE`, `send-json CODE`, `deregister CODE`.
"""

import asyncio
import json
import sys

import cbor2
from aiocoap import DELETE, POST, Context, Message

LINK_FORMAT = 40
SENML_JSON = 110
SENML_CBOR = 112
# RFC 8428 labels
BASE_NAME, NAME, VALUE, STRING_VALUE = -2, 0, 2, 3


async def main(host, port, endpoint):
    context = await Context.create_client_context()
    base = f"coap://{host}:{port}"

    async def post(uri, payload, content_format, code=POST):
        message = Message(code=code, uri=base + uri, payload=payload)
        if content_format is not None:
            message.opt.content_format = content_format
        return await asyncio.wait_for(context.request(message).response, 20)

    registered = await post(
        f"/rd?ep={endpoint}&lt=60&lwm2m=1.1&b=U", b"</>;ct=112,</3303/0>", LINK_FORMAT
    )
    location = "/".join(registered.opt.location_path)
    print("register", registered.code.dotted, location, flush=True)

    records = [
        {BASE_NAME: "/3303/0/", NAME: "5700", VALUE: 21.5},
        {NAME: "5701", STRING_VALUE: "Cel"},
    ]
    sent = await post("/dp", cbor2.dumps(records, canonical=True), SENML_CBOR)
    print("send-cbor", sent.code.dotted, flush=True)

    document = [{"bn": "/3303/0/", "n": "5700", "v": 30.25}]
    sent = await post("/dp", json.dumps(document).encode(), SENML_JSON)
    print("send-json", sent.code.dotted, flush=True)

    gone = await post("/" + location, b"", None, code=DELETE)
    print("deregister", gone.code.dotted, flush=True)
    await context.shutdown()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
