#!/usr/bin/env python3
"""An MQTT-SN 1.2 client built on the PyPI package mqtt-sn-12, driven line by line by
the Rust interop tests.

Usage: mqttsn_client.py HOST PORT

Reads one JSON command per line on stdin and prints one JSON event per line on stdout;
payloads travel as hex.  Encoding and decoding are the library's: its MqttSnClient
connects, registers, subscribes and publishes, and its packet classes decode what the
gateway sends.  This script only adds what the library's own receive loop lacks
(acknowledging QoS 1 and 2 deliveries, waking from sleep on a new UDP port) using the
library's packets.

Commands:
  {"cmd": "connect", "client_id": ..., "clean": true, "keepalive": 30,
   "will": {"topic": ..., "payload": hex, "qos": 0, "retain": false},
   "keep_topics": false, "source": "127.0.0.2"}
                          -> connack (keep_topics: a new socket that keeps the topic ids
                             learnt so far, as a device resuming its session does; source:
                             the local address the socket is bound to)
  {"cmd": "register", "topic": ...}                                   -> registered {topic_id}
  {"cmd": "subscribe", "topic": ..., "qos": 1}                        -> suback {topic_id}
  {"cmd": "subscribe_predefined", "topic_id": 1, "qos": 1}            -> suback
  {"cmd": "publish", "topic": ..., "payload": hex, "qos": 1, "retain": false}
                                       -> published {topic_id} (REGISTER first unless short)
  {"cmd": "publish_predefined", "topic_id": 1, "payload": hex, "qos": 1}  -> published
  {"cmd": "publish_id", "topic_id": 1025, "payload": hex, "qos": 1}
                                       -> published (a normal topic id, no REGISTER)
  {"cmd": "publish_minus_one", "topic_id": 1, "type": "predefined"|"short", "payload": hex}
                                       -> published (from a fresh socket, never connected)
  {"cmd": "recv", "timeout": 10}       -> message {topic, topic_id, payload, qos, retain, dup}
                                          or timeout
  {"cmd": "sleep", "duration": 60}     -> asleep
  {"cmd": "wake", "timeout": 10}       -> message ... then pingresp (from a new UDP port)
  {"cmd": "searchgw"}                  -> gwinfo (from a fresh socket)
  {"cmd": "disconnect"}                -> disconnected
  {"cmd": "vanish"}                    -> vanished (socket closed, nothing sent)
"""

import json
import socket
import sys
import time
import traceback

from mqttsn12.MqttSnConstants import MqttSnConstants as C
from mqttsn12.client.MqttSnClient import MqttSnClient
from mqttsn12.packets import (
    PingReqPacket,
    PubAckPacket,
    PubCompPacket,
    PubRecPacket,
    PublishPacket,
    PubRelPacket,
    RegisterPacket,
)

HOST = sys.argv[1]
PORT = int(sys.argv[2])


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def msg_type(buf):
    return buf[3] if buf[0] == 1 else buf[1]


class Driver:
    def __init__(self):
        self.client = None
        self.client_id = None
        self.predefined = {}

    def new_client(self, timeout=10):
        client = MqttSnClient()
        client.set_timeout(timeout)
        client.open(HOST, PORT)
        return client

    def recv_raw(self, deadline):
        sock = self.client.datagram_socket
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.setblocking(True)
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
            return data
        except socket.timeout:
            return None

    def handle_publish(self, buf):
        """Acknowledges a delivery as its QoS asks and reports it."""
        packet = PublishPacket()
        packet.decode(buf)
        qos = packet.get_qos()
        kind = packet.get_topic_type_id()
        topic_id = packet.get_topic_id()
        if kind == C.TOPIC_TYPE_SHORT:
            topic = topic_id.to_bytes(2, "big").decode()
        elif kind == C.TOPIC_TYPE_PREDEFINED:
            topic = self.predefined.get(topic_id)
        else:
            topic = self.client.topic_map.get(topic_id)
        if qos == 1:
            self.client.send_puback(packet, C.ACCEPTED)
        elif qos == 2:
            rec = PubRecPacket()
            rec.set_message_id(packet.get_message_id())
            self.client.send_packet(rec.encode())
            deadline = time.monotonic() + 10
            while True:
                answer = self.recv_raw(deadline)
                if answer is None:
                    raise RuntimeError("no PUBREL")
                if msg_type(answer) == C.TYPE_PUBREL:
                    rel = PubRelPacket()
                    rel.decode(answer)
                    comp = PubCompPacket()
                    comp.set_message_id(rel.get_message_id())
                    self.client.send_packet(comp.encode())
                    break
        emit(
            "message",
            topic=topic,
            topic_id=topic_id,
            payload=bytes(packet.get_data()).hex(),
            qos=qos,
            retain=packet.get_retain(),
            dup=packet.get_dup(),
        )

    def receive(self, timeout, until=None):
        """Handles REGISTER and PUBLISH until a message arrives (or `until` does)."""
        deadline = time.monotonic() + timeout
        while True:
            buf = self.recv_raw(deadline)
            if buf is None:
                emit("timeout")
                return
            kind = msg_type(buf)
            if kind == C.TYPE_REGISTER:
                # The library records the topic id and answers REGACK.
                self.client.process_register(buf)
            elif kind == C.TYPE_PUBLISH:
                self.handle_publish(buf)
                if until is None:
                    return
            elif until is not None and kind == until:
                emit("pingresp")
                return
            elif kind == C.TYPE_DISCONNECT:
                emit("server_disconnect")
                return

    def run(self, cmd):
        name = cmd["cmd"]
        if name == "connect":
            previous = self.client
            self.client = self.new_client()
            if cmd.get("source"):
                # A device on another host, as the gateway's ${peerhost} sees it.
                self.client.datagram_socket.bind((cmd["source"], 0))
            if previous is not None:
                if cmd.get("keep_topics", False):
                    self.client.topic_map = dict(previous.topic_map)
                previous.close()
            self.client_id = cmd["client_id"]
            self.client.set_client_id(self.client_id)
            self.client.set_clean_session(cmd.get("clean", True))
            self.client.set_keep_alive(cmd.get("keepalive", 30))
            will = cmd.get("will")
            if will:
                self.client.set_will(
                    will["topic"],
                    bytes.fromhex(will["payload"]).decode(),
                    will.get("qos", 0),
                    will.get("retain", False),
                )
            self.client.send_connect()
            emit("connack")
        elif name == "subscribe":
            self.client.send_subscribe(cmd["topic"], cmd.get("qos", 0), None)
            topic_id = self.client.search_topic_id(cmd["topic"])
            emit("suback", topic_id=topic_id)
        elif name == "subscribe_predefined":
            self.predefined[cmd["topic_id"]] = cmd.get("topic")
            self.client.send_subscribe_predefined(cmd["topic_id"], cmd.get("qos", 0), None)
            emit("suback", topic_id=cmd["topic_id"])
        elif name == "publish":
            topic_id = self.client.send_publish(
                cmd["topic"],
                bytes.fromhex(cmd["payload"]),
                cmd.get("qos", 0),
                cmd.get("retain", False),
            )
            emit("published", topic_id=topic_id)
        elif name == "register":
            topic_id = self.client.send_register(cmd["topic"])
            # What the library's send_publish would record, so a delivery under it is named.
            self.client.register_topic(topic_id, cmd["topic"])
            emit("registered", topic_id=topic_id)
        elif name == "publish_id":
            self.client.send_publish_with_id(
                cmd["topic_id"],
                C.TOPIC_TYPE_NORMAL,
                bytes.fromhex(cmd["payload"]),
                cmd.get("qos", 0),
            )
            emit("published", topic_id=cmd["topic_id"])
        elif name == "publish_predefined":
            self.client.send_publish_predefined(
                cmd["topic_id"], bytes.fromhex(cmd["payload"]), cmd.get("qos", 0)
            )
            emit("published", topic_id=cmd["topic_id"])
        elif name == "publish_minus_one":
            anonymous = self.new_client()
            data = bytes.fromhex(cmd["payload"])
            if cmd["type"] == "short":
                anonymous.send_publish_short(cmd["topic_id"], data, C.QOS_N1)
            else:
                anonymous.send_publish_predefined(cmd["topic_id"], data, C.QOS_N1)
            anonymous.close()
            emit("published", topic_id=cmd["topic_id"])
        elif name == "recv":
            self.receive(cmd.get("timeout", 10))
        elif name == "sleep":
            self.client.send_disconnect(cmd["duration"])
            emit("asleep")
        elif name == "wake":
            # A device waking from sleep often comes back from another source port.
            topic_map = self.client.topic_map
            self.client.datagram_socket.close()
            self.client.open_socket(self.client.address, PORT)
            self.client.topic_map = topic_map
            ping = PingReqPacket()
            # Set directly: the library's setter stores bytes its encoder cannot take.
            ping.client_id = self.client_id
            self.client.send_packet(ping.encode())
            self.receive(cmd.get("timeout", 10), until=C.TYPE_PINGRESP)
        elif name == "searchgw":
            searcher = self.new_client()
            # The library raises unless GWINFO answers.
            searcher.send_search_gateway(1)
            searcher.close()
            emit("gwinfo")
        elif name == "disconnect":
            self.client.send_disconnect(0)
            emit("disconnected")
        elif name == "vanish":
            self.client.datagram_socket.close()
            emit("vanished")
        else:
            emit("error", message=f"unknown command {name}")


def main():
    driver = Driver()
    emit("started")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            driver.run(json.loads(line))
        except Exception as error:  # reported, so the test fails with the reason
            emit("error", message=f"{type(error).__name__}: {error}", trace=traceback.format_exc())


if __name__ == "__main__":
    main()
