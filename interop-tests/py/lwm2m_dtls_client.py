#!/usr/bin/env python3
"""An LwM2M 1.0 device over DTLS 1.2 with a pre-shared key, on aiocoap (PyPI) and its tinydtls
transport (DTLSSocket, PyPI). aiocoap has no LwM2M client; this script is the device around
it: it registers, then serves the server's requests, which arrive on the DTLS session the
device opened (aiocoap hands requests coming in on a client session to the context's site).

Usage: lwm2m_dtls_client.py HOST PORT ENDPOINT IDENTITY KEY [LIFETIME [TIMEOUT [LOCAL_PORT]]];
TIMEOUT (s, default 20) bounds each request, the handshake included; with LOCAL_PORT the
device sends from that UDP port, as one that binds a fixed port does (aiocoap's tinydtls
transport lets the system choose, so the event loop is asked to bind it).

Resources: /3/0/0 Manufacturer (read), /3/0/13 Current Time (read), /3/0/14 UTC Offset
(read, write), /3303/0/5700 Sensor Value (read, observe). Values are text/plain.

Prints one line per event: `registered LOCATION`, `error register CODE-OR-ERROR`,
`write PATH VALUE`, `observed PATH`, `updated CODE`, `deregistered CODE`.
Reads stdin lines: `set PATH VALUE` (a notification follows for observed resources),
`update`, `deregister`.
"""

import asyncio
import sys
import time

from aiocoap import CHANGED, CONTENT, DELETE, POST, Context, Message, resource
from aiocoap.numbers.codes import Code

LINK_FORMAT = 40
TEXT = 0


def say(*words):
    print(*words, flush=True)


class Value(resource.ObservableResource):
    def __init__(self, path, value, writable=False, read=None):
        super().__init__()
        self.path = path
        self.value = value
        self.writable = writable
        self.read = read

    def current(self):
        return self.read() if self.read else self.value

    async def add_observation(self, request, serverobservation):
        await super().add_observation(request, serverobservation)
        say("observed", self.path)

    async def render_get(self, request):
        return Message(code=CONTENT, payload=self.current().encode(), content_format=TEXT)

    async def render_put(self, request):
        if not self.writable:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        self.value = request.payload.decode()
        say("write", self.path, self.value)
        return Message(code=CHANGED)

    def set(self, value):
        self.value = value
        self.updated_state()


async def main(host, port, endpoint, identity, key, lifetime="60", timeout="20", local_port=None):
    if local_port is not None:
        loop = asyncio.get_running_loop()
        open_endpoint = loop.create_datagram_endpoint

        def bound(*args, **kwargs):
            kwargs.setdefault("local_addr", ("0.0.0.0", int(local_port)))
            return open_endpoint(*args, **kwargs)

        loop.create_datagram_endpoint = bound

    values = [
        Value("/3/0/0", "Open Mobile Alliance"),
        Value("/3/0/13", "", read=lambda: str(int(time.time()))),
        Value("/3/0/14", "+01:00", writable=True),
        Value("/3303/0/5700", "21.5"),
    ]
    site = resource.Site()
    for value in values:
        site.add_resource(value.path.strip("/").split("/"), value)

    context = await Context.create_server_context(site, transports=["tinydtls"])
    base = f"coaps://{host}:{port}"
    context.client_credentials.load_from_dict(
        {
            base + "/*": {
                "dtls": {"psk": key.encode(), "client-identity": identity.encode()}
            }
        }
    )

    async def request(code, path, payload=b"", content_format=None):
        message = Message(code=code, uri=base + path, payload=payload)
        if content_format is not None:
            message.opt.content_format = content_format
        return await asyncio.wait_for(context.request(message).response, float(timeout))

    try:
        return await serve(request, endpoint, lifetime, values)
    finally:
        await context.shutdown()


async def serve(request, endpoint, lifetime, values):
    by_path = {value.path: value for value in values}
    try:
        registered = await request(
            POST,
            f"/rd?ep={endpoint}&lt={lifetime}&lwm2m=1.0&b=U",
            b"</1/0>,</3/0>,</3303/0>",
            LINK_FORMAT,
        )
    except Exception as error:
        say("error register", type(error).__name__)
        return 1
    if not registered.code.is_successful():
        say("error register", registered.code.dotted)
        return 1
    location = "/".join(registered.opt.location_path)
    # The session lives as long as its remote is referenced: the server's requests come
    # in on it, so it is kept until the end.
    session = registered.remote
    say("registered", location)

    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        words = line.split()
        if words[:1] == ["set"] and len(words) == 3 and words[1] in by_path:
            by_path[words[1]].set(words[2])
        elif words == ["update"]:
            updated = await request(POST, "/" + location)
            say("updated", updated.code.dotted)
        elif words == ["deregister"]:
            gone = await request(DELETE, "/" + location)
            say("deregistered", gone.code.dotted)
            break
        else:
            say("error unknown command", line.strip())
    del session
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:9])))
