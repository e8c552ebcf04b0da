#!/usr/bin/env node
// A @stomp/stompjs client over WebSocket (the ws package), driven line by line by the
// Rust interop tests, with the line protocol of py/stomp_client.py: one JSON command per
// line on stdin, one JSON event per line on stdout, bodies as hex. Every frame the
// server sends is printed as it arrives; every command answers "ok" (or "failed").
//
// Usage: node stomp_client.js URL
//
// Commands (field "cmd"):
//   connect     login, passcode, headers {}, heartbeats [out, in] -> ok, then connected / error
//   subscribe   destination, id, ack                              -> ok
//   unsubscribe id                                                -> ok
//   send        destination, body (hex), headers {}, binary       -> ok
//   ack / nack  message_id (the MESSAGE's message-id), transaction -> ok
//   begin / commit / abort  transaction                           -> ok
//   receipt     id: print a receipt event when RECEIPT id comes   -> ok
//   disconnect                                                    -> ok
'use strict'

const { Client } = require('@stomp/stompjs')
const WebSocket = require('ws')
const readline = require('readline')

const url = process.argv[2]
const say = (event, fields = {}) => console.log(JSON.stringify({ ...fields, event }))
const hex = (bytes) => Buffer.from(bytes).toString('hex')

let client = null
const messages = new Map()
const transactions = new Map()

function connect (command) {
  const [outgoing, incoming] = command.heartbeats || [0, 0]
  client = new Client({
    webSocketFactory: () => new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']),
    connectHeaders: {
      ...(command.login !== undefined ? { login: command.login, passcode: command.passcode } : {}),
      ...(command.headers || {})
    },
    heartbeatOutgoing: outgoing,
    heartbeatIncoming: incoming,
    reconnectDelay: 0,
    debug: () => {},
    onConnect: (frame) => say('connected', { headers: frame.headers }),
    onStompError: (frame) => say('error', { headers: frame.headers, body: hex(frame.binaryBody) }),
    onWebSocketClose: () => say('disconnected'),
    onUnhandledMessage: (message) => say('message', {
      headers: message.headers, body: hex(message.binaryBody), unhandled: true
    })
  })
  client.activate()
}

function run (command) {
  switch (command.cmd) {
    case 'connect':
      connect(command)
      break
    case 'subscribe':
      client.subscribe(command.destination, (message) => {
        messages.set(message.headers['message-id'], message)
        say('message', { headers: message.headers, body: hex(message.binaryBody) })
      }, { id: command.id, ack: command.ack || 'auto' })
      break
    case 'unsubscribe':
      client.unsubscribe(command.id)
      break
    case 'send': {
      const body = Buffer.from(command.body || '', 'hex')
      const frame = { destination: command.destination, headers: command.headers || {} }
      if (command.binary) {
        frame.binaryBody = new Uint8Array(body)
      } else {
        frame.body = body.toString('utf8')
      }
      client.publish(frame)
      break
    }
    case 'ack':
    case 'nack': {
      const message = messages.get(command.message_id)
      if (!message) throw new Error(`no message ${command.message_id}`)
      const headers = command.transaction ? { transaction: command.transaction } : {}
      message[command.cmd](headers)
      break
    }
    case 'begin':
      transactions.set(command.transaction, client.begin(command.transaction))
      break
    case 'commit':
      transactions.get(command.transaction).commit()
      break
    case 'abort':
      transactions.get(command.transaction).abort()
      break
    case 'receipt':
      client.watchForReceipt(command.id, (frame) => say('receipt', { headers: frame.headers }))
      break
    case 'disconnect':
      client.deactivate()
      break
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

say('started')
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  try {
    run(JSON.parse(line))
    say('ok')
  } catch (error) {
    say('failed', { reason: String(error) })
  }
}).on('close', () => process.exit(0))
