#!/usr/bin/env python3
"""A CoAP device on aiocoap (PyPI) that is a client and a server on one UDP socket: it
opens a connection with the gateway (connection mode, POST /mqtt/connection) from the
socket its resources are served on, so the gateway's requests to it reach those resources.

Usage: coap_connected_server.py HOST PORT CLIENTID

Prints `connected TOKEN` once the gateway gave it a connection token, then a line per
request served: `served METHOD PATH PAYLOAD`. Resources:
  sensor  GET: 2.05 `22.5` (text/plain); PUT and POST: 2.04 with the payload echoed back
  slow    GET: 2.05 `late`, after 2 s (aiocoap acknowledges first, then responds separately)
  silent  GET: never answered (acknowledged only)
"""

import asyncio
import sys

import aiocoap
import aiocoap.resource as resource
from aiocoap import Message
from aiocoap.numbers.codes import Code


def say(line):
    print(line, flush=True)


class Sensor(resource.Resource):
    async def render_get(self, request):
        say("served GET sensor " + request.payload.decode(errors="replace"))
        return Message(code=Code.CONTENT, payload=b"22.5", content_format=0)

    async def render_put(self, request):
        say("served PUT sensor " + request.payload.decode(errors="replace"))
        return Message(code=Code.CHANGED, payload=request.payload)

    async def render_post(self, request):
        say("served POST sensor " + request.payload.decode(errors="replace"))
        return Message(code=Code.CHANGED, payload=request.payload)


class Slow(resource.Resource):
    async def render_get(self, request):
        say("served GET slow")
        await asyncio.sleep(2)
        return Message(code=Code.CONTENT, payload=b"late")


class Silent(resource.Resource):
    async def render_get(self, request):
        say("served GET silent")
        await asyncio.Event().wait()


async def main():
    host, port, client_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    site = resource.Site()
    site.add_resource(["sensor"], Sensor())
    site.add_resource(["slow"], Slow())
    site.add_resource(["silent"], Silent())
    context = await aiocoap.Context.create_server_context(
        # Port 0: the system's choice, the gateway learns it from the connection request.
        site, bind=("::", 0), transports=["udp6"]
    )
    connect = Message(
        code=Code.POST,
        uri=f"coap://{host}:{port}/mqtt/connection?clientid={client_id}",
    )
    response = await context.request(connect).response
    if response.code != Code.CREATED:
        say(f"refused {response.code}")
        sys.exit(1)
    say("connected " + response.payload.decode())
    await asyncio.Event().wait()


asyncio.run(main())
