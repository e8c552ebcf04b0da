#!/usr/bin/env python3
"""A CoAP client on aiocoap (PyPI), driven by one JSON command per stdin line and answering
one JSON event per line on stdout. One client context, so every request leaves from the same
UDP port, as a device's would.

Usage: coap_client.py [--psk IDENTITY KEY | --ca BASE CA_FILE]. With a pre-shared key,
`coaps://` requests go over DTLS 1.2 (aiocoap's tinydtls transport, on DTLSSocket) with that
key, which must load. With --ca (e.g. --ca coaps+tcp://127.0.0.1:5684 ca.pem), the server
behind BASE is trusted through aiocoap's client credentials when its certificate chains to
CA_FILE and names the host of BASE, for coaps+tcp and coaps+ws; without, a TLS server must
be publicly trusted.

Commands (field "cmd"):
  request      method, uri, payload (hex), non (bool),
               timeout (s, default 20)                     -> response {code, payload}
  observe      uri                                          -> observing {code, observe}
  notification timeout (s)                                  -> notification {payload, observe,
                                                               mtype} or timeout
  cancel                                                    -> cancelled
"""

import asyncio
import json
import sys

from aiocoap import CON, GET, NON, Context, Message
from aiocoap.numbers.codes import Code


def say(event, **fields):
    fields["event"] = event
    print(json.dumps(fields), flush=True)


async def main():
    context = await Context.create_client_context()
    if sys.argv[1:2] == ["--psk"]:
        # aiocoap looks the transport up lazily: a missing DTLSSocket would otherwise
        # show only as a failed request.
        from DTLSSocket import dtls  # noqa: F401

        identity, key = sys.argv[2:4]
        context.client_credentials.load_from_dict(
            {"coaps://*": {"dtls": {"psk": key.encode(), "client-identity": identity.encode()}}}
        )
    elif sys.argv[1:2] == ["--ca"]:
        base, ca_file = sys.argv[2:4]
        # aiocoap looks the TLS credentials up by "SCHEME://HOSTINFO/*" exactly.
        context.client_credentials.load_from_dict(
            {base + "/*": {"tlscert": {"certfile": ca_file}}}
        )
    notifications = asyncio.Queue()
    observation = None
    reader = None
    loop = asyncio.get_running_loop()
    say("started")
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        op = command["cmd"]
        try:
            if op == "request":
                message = Message(
                    code=Code[command["method"]],
                    uri=command["uri"],
                    payload=bytes.fromhex(command.get("payload", "")),
                    mtype=NON if command.get("non") else CON,
                )
                response = await asyncio.wait_for(
                    context.request(message).response, command.get("timeout", 20)
                )
                say("response", code=response.code.dotted, payload=response.payload.hex())
            elif op == "observe":
                request = context.request(Message(code=GET, uri=command["uri"], observe=0))
                response = await asyncio.wait_for(request.response, 20)

                async def collect(observed):
                    try:
                        async for note in observed:
                            await notifications.put(note)
                    except Exception as error:  # the observation ended
                        await notifications.put(error)

                # A refused observation has nothing to collect: its end would otherwise
                # be queued ahead of the notifications of a later, accepted one.
                if response.code.is_successful():
                    observation = request.observation
                    reader = asyncio.ensure_future(collect(observation))
                say("observing", code=response.code.dotted, observe=response.opt.observe)
            elif op == "notification":
                try:
                    note = await asyncio.wait_for(notifications.get(), command.get("timeout", 10))
                except asyncio.TimeoutError:
                    say("timeout")
                    continue
                if isinstance(note, Exception):
                    say("ended", error=repr(note))
                    continue
                say(
                    "notification",
                    payload=note.payload.hex(),
                    observe=note.opt.observe,
                    mtype=str(note.mtype),
                    code=note.code.dotted,
                )
            elif op == "cancel":
                if observation is not None:
                    observation.cancel()
                if reader is not None:
                    reader.cancel()
                observation = None
                say("cancelled")
            else:
                say("error", error="unknown command " + op)
        except Exception as error:
            say("error", error=repr(error), cause=repr(error.__cause__))
    await context.shutdown()


asyncio.run(main())
