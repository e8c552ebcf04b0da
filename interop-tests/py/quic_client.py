#!/usr/bin/env python3
"""An MQTT over QUIC client on aioquic (PyPI), driven line by line by the Rust interop tests.

Usage: quic_client.py HOST PORT CAFILE

QUIC is aioquic's: the handshake (TLS 1.3, ALPN, certificate checked against CAFILE for the
name "localhost"), streams, flow control and connection close. On the one bidirectional
stream the client opens, this script speaks MQTT 3.1.1 or 5 itself, as EMQX's and NanoSDK's
QUIC clients do: it encodes CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ and DISCONNECT and
decodes what the gateway answers.

Reads one JSON command per line on stdin and prints one JSON event per line on stdout;
payloads travel as hex.

Commands:
  {"cmd": "handshake", "alpn": ["mqtt"]}      -> handshake {alpn, session_resumed,
                                                 early_data_accepted} | error {error}
      With "resume": true the session ticket of the previous connection is offered (that
      connection is closed first); with "early": {"version", "client_id"} CONNECT is sent
      before the handshake completes, as 0-RTT data when the ticket allows it, and the
      answer carries the CONNACK's reason_code. "cert" and "key" (PEM files) present a
      client certificate.
  {"cmd": "send_raw", "data": hex}            -> sent (bytes on the stream, opening it)
  {"cmd": "connect", "version": "311"|"5", "client_id": ..., "keepalive": 30, "username": ...,
   "password": ..., "clean": true}
                                              -> connack {reason_code, session_present}
  {"cmd": "subscribe", "topic": ..., "qos": 1} -> suback {granted}
  {"cmd": "publish", "topic": ..., "payload": hex, "qos": 0|1, "retain": false}
                                              -> published | puback {reason_code}
  {"cmd": "ping"}                             -> pingresp
  {"cmd": "migrate"}                          -> migrated {local_port} (the connection moves
                                                 to a new UDP socket, the old one closed)
  {"cmd": "recv", "timeout": 10}              -> message {topic, payload, qos, retain}
                                                 | disconnect {reason_code}
                                                 | closed {error_code, reason, seconds}
                                                 | timeout
  {"cmd": "disconnect"}                       -> disconnected
Messages of QoS 1 are acknowledged as they arrive. Anything that goes wrong is an
{"event": "error", "error": ...} line.
"""

import asyncio
import json
import socket
import ssl
import sys
import time
import traceback

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT = 2, 3, 4, 9, 13, 14


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(text):
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


class MqttOverQuic(QuicConnectionProtocol):
    """The QUIC connection; MQTT bytes of the stream are reassembled into packets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = b""
        self.packets = asyncio.Queue()
        self.closed = asyncio.get_event_loop().create_future()
        self.stream_id = None
        self.opened_at = time.monotonic()
        self.handshake_completed = None

    def stream(self):
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id()
        return self.stream_id

    def send(self, data, end=False):
        self._quic.send_stream_data(self.stream(), data, end_stream=end)
        self.transmit()

    def quic_event_received(self, event):
        if isinstance(event, HandshakeCompleted):
            self.handshake_completed = event
        elif isinstance(event, StreamDataReceived):
            self.buffer += event.data
            self.split_packets()
        elif isinstance(event, ConnectionTerminated):
            if not self.closed.done():
                self.closed.set_result(event)

    def split_packets(self):
        while len(self.buffer) >= 2:
            length, multiplier, i = 0, 1, 1
            while True:
                if i >= len(self.buffer):
                    return
                byte = self.buffer[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(self.buffer) < i + length:
                return
            first, body = self.buffer[0], self.buffer[i : i + length]
            self.buffer = self.buffer[i + length :]
            self.packets.put_nowait((first >> 4, first & 0x0F, body))


class Client:
    def __init__(self, host, port, cafile):
        self.host, self.port, self.cafile = host, port, cafile
        self.proto = None
        self.context = None
        self.v5 = False
        self.next_id = 0
        self.events = asyncio.Queue()
        self.reader = None
        self.tickets = []

    def packet_id(self):
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    async def handshake(self, cmd):
        config = QuicConfiguration(
            is_client=True,
            alpn_protocols=cmd.get("alpn", ["mqtt"]),
            server_name="localhost",
            idle_timeout=cmd.get("idle_timeout", 60.0),
        )
        config.verify_mode = ssl.CERT_REQUIRED
        config.load_verify_locations(self.cafile)
        if cmd.get("cert"):
            config.load_cert_chain(cmd["cert"], cmd["key"])
        if cmd.get("resume"):
            if not self.tickets:
                raise RuntimeError("no session ticket from the previous connection")
            config.session_ticket = self.tickets[-1]
        if self.context is not None:
            self.proto.close()
            await self.context.__aexit__(None, None, None)
            self.reader.cancel()
            self.events = asyncio.Queue()
        early = cmd.get("early")
        self.context = connect(
            self.host,
            self.port,
            configuration=config,
            create_protocol=MqttOverQuic,
            session_ticket_handler=self.tickets.append,
            wait_connected=early is None,
        )
        try:
            self.proto = await asyncio.wait_for(self.context.__aenter__(), 10)
            if early is not None:
                self.proto.send(self.connect_packet(early))
                await asyncio.wait_for(self.proto.wait_connected(), 10)
        except Exception as e:  # noqa: BLE001 - the test reads what failed
            self.context = None
            emit("error", error=f"{type(e).__name__}: {e}")
            return
        self.reader = asyncio.ensure_future(self.read_loop())
        done = self.proto.handshake_completed
        fields = {
            "alpn": self.proto._quic.tls.alpn_negotiated,
            "session_resumed": bool(done and done.session_resumed),
            "early_data_accepted": bool(done and done.early_data_accepted),
        }
        if early is not None:
            fields["reason_code"] = (await self.expect(CONNACK))[1]
        emit("handshake", **fields)

    def connect_packet(self, cmd):
        self.v5 = cmd.get("version", "311") == "5"
        username = cmd.get("username")
        password = cmd.get("password")
        flags = 0x02 if cmd.get("clean", True) else 0
        flags |= 0x80 if username is not None else 0
        flags |= 0x40 if password is not None else 0
        body = utf8("MQTT") + bytes([5 if self.v5 else 4, flags])
        body += cmd.get("keepalive", 30).to_bytes(2, "big")
        if self.v5:
            body += varint(0)
        body += utf8(cmd["client_id"])
        if username is not None:
            body += utf8(username)
        if password is not None:
            body += utf8(password)
        return packet(0x10, body)

    async def read_loop(self):
        """Turns packets that nobody asked for into events, acknowledging QoS 1."""
        proto = self.proto
        closed = asyncio.ensure_future(asyncio.shield(proto.closed))
        while True:
            get = asyncio.ensure_future(proto.packets.get())
            done, _ = await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                await self.on_packet(*get.result())
                continue
            get.cancel()
            # Packets that came in with the close still count, in order.
            while not proto.packets.empty():
                await self.on_packet(*proto.packets.get_nowait())
            event = closed.result()
            await self.events.put(
                {
                    "event": "closed",
                    "error_code": event.error_code,
                    "reason": event.reason_phrase,
                    "seconds": time.monotonic() - proto.opened_at,
                }
            )
            return

    async def on_packet(self, kind, flags, body):
        if kind == PUBLISH:
            qos = (flags >> 1) & 3
            n = int.from_bytes(body[:2], "big")
            topic = body[2 : 2 + n].decode()
            rest = body[2 + n :]
            if qos:
                pid, rest = rest[:2], rest[2:]
                self.proto.send(packet(PUBACK << 4, pid))
            if self.v5:
                plen, used = decode_varint(rest)
                rest = rest[used + plen :]
            await self.events.put(
                {
                    "event": "message",
                    "topic": topic,
                    "payload": rest.hex(),
                    "qos": qos,
                    "retain": bool(flags & 1),
                }
            )
        elif kind == DISCONNECT:
            await self.events.put(
                {"event": "disconnect", "reason_code": body[0] if body else 0}
            )
        else:
            await self.events.put({"event": "packet", "type": kind, "body": body.hex()})

    async def expect(self, kind, timeout=10):
        """The next event of this packet type; others met on the way stay queued."""
        deadline = time.monotonic() + timeout
        skipped = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no packet of type {kind} within {timeout}s")
                event = await asyncio.wait_for(self.events.get(), left)
                if event["event"] == "packet" and event["type"] == kind:
                    return bytes.fromhex(event["body"])
                if event["event"] == "closed":
                    skipped.append(event)
                    raise ConnectionError(f"connection closed while waiting: {event}")
                skipped.append(event)
        finally:
            # Put back what was not ours, ahead of anything newer.
            rest = []
            while not self.events.empty():
                rest.append(self.events.get_nowait())
            for event in skipped + rest:
                self.events.put_nowait(event)

    async def run(self, cmd):
        op = cmd["cmd"]
        if op == "handshake":
            await self.handshake(cmd)
        elif op == "send_raw":
            self.proto.send(bytes.fromhex(cmd["data"]))
            emit("sent")
        elif op == "connect":
            self.proto.send(self.connect_packet(cmd))
            ack = await self.expect(CONNACK)
            emit("connack", session_present=bool(ack[0] & 1), reason_code=ack[1])
        elif op == "subscribe":
            pid = self.packet_id()
            body = pid.to_bytes(2, "big") + (varint(0) if self.v5 else b"")
            body += utf8(cmd["topic"]) + bytes([cmd.get("qos", 0)])
            self.proto.send(packet(0x82, body))
            ack = await self.expect(SUBACK)
            granted = ack[2:]
            if self.v5:
                plen, used = decode_varint(granted)
                granted = granted[used + plen :]
            emit("suback", granted=list(granted))
        elif op == "publish":
            qos = cmd.get("qos", 0)
            body = utf8(cmd["topic"])
            if qos:
                body += self.packet_id().to_bytes(2, "big")
            if self.v5:
                body += varint(0)
            body += bytes.fromhex(cmd.get("payload", ""))
            flags = (qos << 1) | (1 if cmd.get("retain") else 0)
            self.proto.send(packet((PUBLISH << 4) | flags, body))
            if qos:
                ack = await self.expect(PUBACK)
                emit("puback", reason_code=ack[2] if len(ack) > 2 else 0)
            else:
                emit("published")
        elif op == "ping":
            self.proto.send(packet(0xC0, b""))
            await self.expect(PINGRESP)
            emit("pingresp")
        elif op == "migrate":
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0, 0, 0))
            old = self.proto._transport
            # The protocol takes the new socket as its transport: what it sends from now
            # on leaves from another port, which the server sees as a new path.
            await asyncio.get_event_loop().create_datagram_endpoint(
                lambda: self.proto, sock=sock
            )
            old.close()
            emit("migrated", local_port=sock.getsockname()[1])
        elif op == "recv":
            try:
                event = await asyncio.wait_for(self.events.get(), cmd.get("timeout", 10))
            except asyncio.TimeoutError:
                emit("timeout")
                return
            emit(event.pop("event"), **event)
        elif op == "disconnect":
            self.proto.send(packet(0xE0, b"\x00\x00" if self.v5 else b""), end=True)
            self.proto.close()
            emit("disconnected")
        else:
            emit("error", error=f"unknown command {op}")


def decode_varint(data):
    value, multiplier = 0, 1
    for i, byte in enumerate(data[:4]):
        value += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            return value, i + 1
    raise ValueError("malformed variable byte integer")


async def main():
    host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    client = Client(host, port, cafile)
    loop = asyncio.get_event_loop()
    emit("started")
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        try:
            await client.run(json.loads(line))
        except Exception as e:  # noqa: BLE001 - the test reads what failed
            traceback.print_exc()
            emit("error", error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    asyncio.run(main())
