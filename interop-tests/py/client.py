#!/usr/bin/env python3
"""A paho-mqtt client driven line by line by the Rust interop tests.

Usage: client.py HOST PORT VERSION [--ws PATH] [--cafile CA [--cert CERT --key KEY]]
       (VERSION is "31", "311" or "5"; --ws: MQTT over WebSocket on PATH; --cafile:
       TLS trusting CA, with a client certificate when --cert and --key are given)

Reads one JSON command per line on stdin and prints one JSON event per line on
stdout.  js/client.js speaks exactly the same protocol with MQTT.js, so a Rust test
can drive either library with the same code; the protocol is described in
interop-tests/README.md.  Payloads and binary properties travel as hex so that
arbitrary bytes survive the JSON trip.

Commands are executed one at a time, in order; each answers with one event when it
has completed (for a QoS 1/2 publish: when the broker acknowledged it).  Messages
and disconnections are reported whenever they happen.
"""

import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# How long one command may wait for the broker before it reports a timeout.  The Rust
# side has its own, slightly longer, timeout and kills this process after it.
OP_TIMEOUT = 10.0

# MQTT 5 property names as the spec writes them.  On the JSON side a property is
# named in snake_case ("Message Expiry Interval" -> "message_expiry_interval"); paho
# names the attribute without spaces ("MessageExpiryInterval").
PROPERTY_NAMES = [
    "Payload Format Indicator", "Message Expiry Interval", "Content Type",
    "Response Topic", "Correlation Data", "Subscription Identifier",
    "Session Expiry Interval", "Assigned Client Identifier", "Server Keep Alive",
    "Authentication Method", "Authentication Data", "Request Problem Information",
    "Will Delay Interval", "Request Response Information", "Response Information",
    "Server Reference", "Reason String", "Receive Maximum", "Topic Alias Maximum",
    "Topic Alias", "Maximum QoS", "Retain Available", "User Property",
    "Maximum Packet Size", "Wildcard Subscription Available",
    "Subscription Identifier Available", "Shared Subscription Available",
]
SNAKE_TO_PAHO = {n.lower().replace(" ", "_"): n.replace(" ", "") for n in PROPERTY_NAMES}
BINARY_PROPERTIES = {"correlation_data", "authentication_data"}

# paho 2 reports an MQTT 3.1/3.1.1 CONNACK return code as the MQTT 5 reason code it
# corresponds to; the tests want the byte the broker sent, so map it back.
V5_TO_V3_CONNACK = {0: 0, 0x84: 1, 0x85: 2, 0x88: 3, 0x86: 4, 0x87: 5}

print_lock = threading.Lock()


def emit(event, **fields):
    fields["event"] = event
    line = json.dumps(fields)
    with print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def props_to_json(props):
    """paho Properties -> {snake_case: value}, binary values as hex."""
    out = {}
    if props is None:
        return out
    for snake, attr in SNAKE_TO_PAHO.items():
        if hasattr(props, attr):
            value = getattr(props, attr)
            if snake in BINARY_PROPERTIES:
                value = bytes(value).hex()
            elif snake == "user_property":
                value = [[k, v] for (k, v) in value]
            elif snake == "subscription_identifier" and not isinstance(value, list):
                value = [value]
            out[snake] = value
    return out


def props_from_json(packet_type, spec):
    """{snake_case: value} -> paho Properties for the given packet type, or None."""
    if not spec:
        return None
    props = Properties(packet_type)
    for snake, value in spec.items():
        attr = SNAKE_TO_PAHO[snake]
        if snake in BINARY_PROPERTIES:
            value = bytes.fromhex(value)
        elif snake == "user_property":
            value = [(k, v) for (k, v) in value]
        setattr(props, attr, value)
    return props


class Driver:
    def __init__(self, host, port, version, options):
        self.options = options
        self.host = host
        self.port = port
        self.v5 = version == "5"
        self.protocol = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[version]
        self.client = None
        # Set by callbacks, awaited by the command being executed.
        self.connack = None  # True once a CONNACK arrived
        self.connack_done = threading.Event()
        self.acks = {}
        self.acks_lock = threading.Lock()
        # PUBACK / PUBREC reason codes by mid, read once the publish completed.
        self.publish_reasons = {}
        self.closing = False

    # ---- callbacks (network thread) -------------------------------------------------

    def on_connect(self, client, userdata, flags, reason_code, properties):
        code = reason_code.value
        if not self.v5:
            code = V5_TO_V3_CONNACK.get(code, code)
        self.connack = True
        # Reported from here, not by op_connect: paho may report the close of a
        # refused connection before op_connect wakes up, and events must keep the
        # order of the wire.
        emit("connack", reason_code=code, session_present=bool(flags.session_present),
             props=props_to_json(properties) if self.v5 else {})
        self.connack_done.set()

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.closing:
            pass  # our own DISCONNECT: op_disconnect reports it
        elif flags.is_disconnect_packet_from_server:
            emit("server_disconnect", reason_code=reason_code.value,
                 props=props_to_json(properties))
            # paho closes the connection on a DISCONNECT and says nothing more; the
            # protocol promises a connection_lost whenever the connection ends.
            emit("connection_lost", reason="after server DISCONNECT")
        else:
            emit("connection_lost", reason=str(reason_code))
        # Unblock a connect that never got its CONNACK (connection refused by close).
        self.connack_done.set()

    def on_message(self, client, userdata, msg):
        emit("message", topic=msg.topic, payload=msg.payload.hex(), qos=msg.qos,
             retain=bool(msg.retain), dup=bool(msg.dup),
             props=props_to_json(msg.properties) if self.v5 else {})

    def on_publish(self, client, userdata, mid, reason_code, properties):
        with self.acks_lock:
            self.publish_reasons[mid] = reason_code.value

    def on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._ack(mid, [rc.value for rc in reason_codes])

    def on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        self._ack(mid, [rc.value for rc in reason_codes])

    def _ack(self, mid, value):
        with self.acks_lock:
            entry = self.acks.setdefault(mid, [threading.Event(), None])
        entry[1] = value
        entry[0].set()

    def _wait_ack(self, mid):
        with self.acks_lock:
            entry = self.acks.setdefault(mid, [threading.Event(), None])
        if not entry[0].wait(OP_TIMEOUT):
            raise TimeoutError(f"no acknowledgement for mid {mid}")
        with self.acks_lock:
            del self.acks[mid]
        return entry[1]

    # ---- commands (main thread) -----------------------------------------------------

    def op_connect(self, cmd):
        clean = cmd.get("clean", True)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cmd.get("client_id", ""),
            clean_session=None if self.v5 else clean,
            protocol=self.protocol,
            # A lost connection must stay lost: the tests observe takeovers and
            # refusals, which an automatic reconnect would hide.
            reconnect_on_failure=False,
            transport="websockets" if "--ws" in self.options else "tcp",
        )
        c = self.client
        if "--ws" in self.options:
            c.ws_set_options(path=self.options["--ws"])
        if "--cafile" in self.options:
            c.tls_set(ca_certs=self.options["--cafile"], certfile=self.options.get("--cert"),
                      keyfile=self.options.get("--key"))
        c.on_connect = self.on_connect
        c.on_disconnect = self.on_disconnect
        c.on_message = self.on_message
        c.on_publish = self.on_publish
        c.on_subscribe = self.on_subscribe
        c.on_unsubscribe = self.on_unsubscribe
        if "username" in cmd:
            c.username_pw_set(cmd["username"], cmd.get("password"))
        will = cmd.get("will")
        if will:
            c.will_set(will["topic"], bytes.fromhex(will.get("payload", "")),
                       will.get("qos", 0), will.get("retain", False),
                       props_from_json(PacketTypes.WILLMESSAGE, will.get("props")))
        kwargs = {"keepalive": cmd.get("keepalive", 60)}
        if self.v5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = props_from_json(PacketTypes.CONNECT, cmd.get("props"))
        self.connack = None
        self.connack_done.clear()
        try:
            c.connect(self.host, self.port, **kwargs)
        except OSError as e:
            emit("connection_lost", reason=f"connect failed: {e}")
            return
        c.loop_start()
        if not self.connack_done.wait(OP_TIMEOUT):
            raise TimeoutError("no CONNACK")
        # on_connect reported the CONNACK, or on_disconnect the close before it.

    def op_subscribe(self, cmd):
        subs = []
        for s in cmd["subs"]:
            if self.v5:
                opts = SubscribeOptions(qos=s.get("qos", 0), noLocal=s.get("nl", False),
                                        retainAsPublished=s.get("rap", False),
                                        retainHandling=s.get("rh", 0))
                subs.append((s["filter"], opts))
            else:
                subs.append((s["filter"], s.get("qos", 0)))
        props = props_from_json(PacketTypes.SUBSCRIBE, cmd.get("props")) if self.v5 else None
        rc, mid = self.client.subscribe(subs, properties=props)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"subscribe failed: {mqtt.error_string(rc)}")
        emit("suback", reason_codes=self._wait_ack(mid))

    def op_unsubscribe(self, cmd):
        rc, mid = self.client.unsubscribe(cmd["filters"])
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"unsubscribe failed: {mqtt.error_string(rc)}")
        emit("unsuback", reason_codes=self._wait_ack(mid))

    def op_publish(self, cmd):
        props = props_from_json(PacketTypes.PUBLISH, cmd.get("props")) if self.v5 else None
        info = self.client.publish(cmd["topic"], bytes.fromhex(cmd.get("payload", "")),
                                   cmd.get("qos", 0), cmd.get("retain", False), props)
        if cmd.get("wait", True):
            info.wait_for_publish(OP_TIMEOUT)
            if not info.is_published():
                raise TimeoutError(f"publish not completed (rc {info.rc})")
        with self.acks_lock:
            reason = self.publish_reasons.pop(info.mid, 0)
        emit("published", mid=info.mid, reason_code=reason)

    def op_publish_many(self, cmd):
        """Publishes count messages whose payloads are their index in decimal, padded
        with '.' to payload_size bytes; answers when the last one completed."""
        size = cmd.get("payload_size", 0)
        infos = []
        for i in range(cmd["count"]):
            payload = str(i).encode().ljust(size, b".")
            infos.append(self.client.publish(cmd["topic"], payload, cmd.get("qos", 0)))
        for info in infos:
            info.wait_for_publish(OP_TIMEOUT)
            if not info.is_published():
                raise TimeoutError(f"publish {info.mid} not completed (rc {info.rc})")
        emit("published_many", count=len(infos))

    def op_disconnect(self, cmd):
        props = props_from_json(PacketTypes.DISCONNECT, cmd.get("props")) if self.v5 else None
        rc = cmd.get("reason_code", 0)
        reason = mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=rc) if self.v5 else None
        self.closing = True
        self.client.disconnect(reason, props)
        self.client.loop_stop()
        emit("disconnected")

    def run(self):
        emit("started")
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            op = cmd["op"]
            try:
                getattr(self, "op_" + op)(cmd)
            except Exception as e:  # report, keep serving: the test decides
                emit("error", op=op, message=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    flags = sys.argv[4:]
    Driver(sys.argv[1], int(sys.argv[2]), sys.argv[3], dict(zip(flags[::2], flags[1::2]))).run()
