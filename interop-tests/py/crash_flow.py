#!/usr/bin/env python3
"""paho-mqtt clients for the crash tests: many numbered messages through a gateway that
is killed on the way, and a persistent-session subscriber that collects them after.

Usage: crash_flow.py HOST PORT subscribe CLIENT_ID FILTER QOS
       crash_flow.py HOST PORT publish CLIENT_ID TOPIC QOS FIRST COUNT [--resume]
       crash_flow.py HOST PORT receive CLIENT_ID IDLE_SECONDS

subscribe: opens a persistent session (MQTT 5, Session Expiry Interval 3600), subscribes
    and leaves; prints "ready".
publish: publishes COUNT messages whose payloads are the numbers FIRST.., at most 20 in
    flight, printing "acked N" when the broker acknowledged N (PUBACK for QoS 1, PUBCOMP
    for QoS 2). When the connection is lost it prints "lost" and exits, unless --resume:
    then it reconnects to its persistent session and finishes every flow, printing
    "done" once all COUNT are acknowledged.
receive: resumes the session, prints "session_present 0|1", then "got N DUP QOS" for
    each message, and exits after IDLE_SECONDS without one.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

out_lock = threading.Lock()

# Below the gateway's default Receive Maximum (32).
IN_FLIGHT = 20


def say(line):
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def persistent_client(client_id):
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(IN_FLIGHT)
    client.max_queued_messages_set(0)
    return client


def session_properties():
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    return properties


def subscribe(host, port, client_id, filter_, qos):
    client = persistent_client(client_id)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(filter_, qos)
    client.connect(host, port, clean_start=False, properties=session_properties())
    client.loop_start()
    if not subscribed.wait(10):
        sys.exit("no SUBACK")
    client.disconnect()
    client.loop_stop()
    say("ready")


def publish(host, port, client_id, topic, qos, first, count, resume):
    client = persistent_client(client_id)
    numbers = {}
    acked = set()
    finished = threading.Event()
    lock = threading.Lock()

    # paho may report an acknowledgement before publish() has returned its mid; such
    # mids wait here for their number. (No lock may be held across publish(): paho calls
    # on_publish holding the lock publish() needs.)
    early = set()
    # paho 2.2 resends every queued message at once when it reconnects, however many are
    # in flight (its count restarts at zero), and the gateway rightly closes a connection
    # that exceeds its Receive Maximum; so no more than IN_FLIGHT are ever handed to it.
    window = threading.Semaphore(IN_FLIGHT)

    def acknowledged(number):
        with lock:
            if number in acked:
                return
            acked.add(number)
            done = len(acked) == count
        window.release()
        say(f"acked {number}")
        if done:
            finished.set()

    def on_publish(c, userdata, mid, reason_code, properties):
        with lock:
            number = numbers.get(mid)
            if number is None:
                early.add(mid)
                return
        acknowledged(number)

    def on_disconnect(c, userdata, flags, reason_code, properties):
        if not resume:
            say("lost")
            finished.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(0.1, 0.5)
    client.connect(host, port, clean_start=False, properties=session_properties())
    client.loop_start()
    for number in range(first, first + count):
        if not window.acquire(timeout=60) or finished.is_set():
            break
        mid = client.publish(topic, str(number).encode(), qos).mid
        with lock:
            numbers[mid] = number
            already = mid in early
        if already:
            acknowledged(number)
    finished.wait()
    if resume:
        say("done")
    client.disconnect()
    client.loop_stop()


def receive(host, port, client_id, idle):
    client = persistent_client(client_id)
    last = [time.monotonic()]

    def on_connect(c, userdata, flags, reason_code, properties):
        say(f"session_present {int(flags.session_present)}")

    def on_message(c, userdata, message):
        last[0] = time.monotonic()
        say(f"got {message.payload.decode()} {int(message.dup)} {message.qos}")

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(host, port, clean_start=False, properties=session_properties())
    client.loop_start()
    while time.monotonic() - last[0] < idle:
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()


def main():
    host, port, role = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[4:]
    if role == "subscribe":
        subscribe(host, port, args[0], args[1], int(args[2]))
    elif role == "publish":
        publish(host, port, args[0], args[1], int(args[2]), int(args[3]), int(args[4]),
                "--resume" in args)
    elif role == "receive":
        receive(host, port, args[0], float(args[1]))
    else:
        sys.exit(f"unknown role {role}")


if __name__ == "__main__":
    main()
