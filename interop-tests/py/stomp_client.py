#!/usr/bin/env python3
"""A STOMP client on stomp.py (PyPI), driven by one JSON command per stdin line. Every
frame the server sends is printed as one JSON event per line, as it arrives; every
command answers with an "ok" event (or "failed").

Commands (field "cmd"):
  connect     host, port, version ("1.0" | "1.1" | "1.2"), login, passcode, client_id,
              heartbeats [cx, cy], tls {ca, cert, key} (over TLS, the server checked
              against ca and named by host; cert and key: a client certificate)
                                                 -> ok, then connected {headers} or error
  subscribe   destination, id, ack, headers {}  -> ok
  unsubscribe id, headers {}                    -> ok
  send        destination, body (hex), headers {} -> ok
  ack / nack  id, subscription (1.1), transaction, receipt -> ok
  begin / commit / abort  transaction           -> ok
  disconnect  receipt                            -> ok (after the RECEIPT)
  heartbeats                                     -> ok {count} (heart-beats received)
  close                                          -> ok (socket closed without DISCONNECT)
Events: connected, message {headers, body (hex)}, receipt {headers}, error {headers, body},
disconnected, heartbeat_timeout.
"""

import json
import socket
import sys
import threading

import stomp

lock = threading.Lock()


def say(event, **fields):
    fields["event"] = event
    with lock:
        print(json.dumps(fields), flush=True)


def body_hex(body):
    if body is None:
        return ""
    if isinstance(body, str):
        body = body.encode()
    return body.hex()


class Listener(stomp.ConnectionListener):
    def __init__(self):
        self.heartbeats = 0

    def on_connected(self, frame):
        say("connected", headers=frame.headers)

    def on_message(self, frame):
        say("message", headers=frame.headers, body=body_hex(frame.body))

    def on_receipt(self, frame):
        say("receipt", headers=frame.headers)

    def on_error(self, frame):
        say("error", headers=frame.headers, body=body_hex(frame.body))

    def on_disconnected(self):
        say("disconnected")

    def on_heartbeat(self):
        self.heartbeats += 1

    def on_heartbeat_timeout(self):
        say("heartbeat_timeout")


def main():
    conn = None
    listener = Listener()
    say("started")
    for line in sys.stdin:
        command = json.loads(line)
        op = command["cmd"]
        headers = command.get("headers") or {}
        try:
            if op == "connect":
                kind = {
                    "1.0": stomp.Connection10,
                    "1.1": stomp.Connection11,
                    "1.2": stomp.Connection12,
                }[command.get("version", "1.2")]
                options = {"auto_decode": False}
                if kind is not stomp.Connection10:
                    options["heartbeats"] = tuple(command.get("heartbeats", [0, 0]))
                host_and_port = (command["host"], command["port"])
                conn = kind([host_and_port], **options)
                tls = command.get("tls")
                if tls is not None:
                    conn.set_ssl(
                        for_hosts=[host_and_port],
                        ca_certs=tls["ca"],
                        cert_file=tls.get("cert"),
                        key_file=tls.get("key"),
                    )
                conn.set_listener("", listener)
                if command.get("client_id"):
                    headers["client-id"] = command["client_id"]
                conn.connect(
                    command.get("login"),
                    command.get("passcode"),
                    wait=False,
                    headers=headers,
                )
                say("ok")
            elif op == "subscribe":
                conn.subscribe(
                    command["destination"],
                    command["id"],
                    ack=command.get("ack", "auto"),
                    headers=headers,
                )
                say("ok")
            elif op == "unsubscribe":
                conn.unsubscribe(command["id"], headers=headers)
                say("ok")
            elif op == "send":
                conn.send(
                    command["destination"],
                    bytes.fromhex(command.get("body", "")),
                    headers=headers,
                )
                say("ok")
            elif op in ("ack", "nack"):
                method = getattr(conn, op)
                extra = {"transaction": command.get("transaction"), "receipt": command.get("receipt")}
                if isinstance(conn, stomp.Connection11):
                    method(command["id"], command.get("subscription"), **extra)
                else:
                    method(command["id"], **extra)
                say("ok")
            elif op == "begin":
                conn.begin(command["transaction"])
                say("ok")
            elif op == "commit":
                conn.commit(command["transaction"])
                say("ok")
            elif op == "abort":
                conn.abort(command["transaction"])
                say("ok")
            elif op == "disconnect":
                conn.disconnect(receipt=command.get("receipt"))
                say("ok")
            elif op == "heartbeats":
                say("ok", count=listener.heartbeats)
            elif op == "close":
                # close() alone leaves the connection open while the receiver thread
                # still blocks in recv on it.
                conn.transport.socket.shutdown(socket.SHUT_RDWR)
                conn.transport.socket.close()
                say("ok")
            else:
                say("failed", reason=f"unknown command {op}")
        except Exception as error:  # reported to the test, which fails with it
            say("failed", reason=repr(error))


if __name__ == "__main__":
    main()
