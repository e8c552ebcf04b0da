#!/usr/bin/env node
// An MQTT.js client driven line by line by the Rust interop tests.
//
// Usage: node client.js HOST PORT VERSION [--ws PATH] [--cafile CA [--cert CERT --key KEY]]
//        (VERSION is "31", "311" or "5"; --ws: MQTT over WebSocket on PATH; --cafile:
//        TLS trusting CA, with a client certificate when --cert and --key are given)
//
// Same line protocol as py/client.py (see interop-tests/README.md): one JSON command
// per line on stdin, one JSON event per line on stdout, payloads and binary
// properties as hex. Commands run one at a time, in order; each answers with one
// event when it has completed.
'use strict'

const mqtt = require('mqtt')
const readline = require('readline')
const fs = require('fs')

const [host, portText, versionText, ...flagList] = process.argv.slice(2)
const flags = {}
for (let i = 0; i + 1 < flagList.length; i += 2) flags[flagList[i]] = flagList[i + 1]
const port = Number(portText)
const v5 = versionText === '5'
// MQTT 3.1 differs from 3.1.1 in the CONNECT's protocol name and level only.
const protocolVersion = { 31: 3, 311: 4, 5: 5 }[versionText]
const protocolId = versionText === '31' ? 'MQIsdp' : 'MQTT'

// How long one command may wait for the broker before it reports a timeout; the Rust
// side kills this process a little later.
const OP_TIMEOUT_MS = 10000

// MQTT.js names properties in camelCase and represents a few of them its own way; the
// JSON side uses the snake_case of the spec's names, like the paho driver.
const CAMEL = {
  payload_format_indicator: 'payloadFormatIndicator',
  message_expiry_interval: 'messageExpiryInterval',
  content_type: 'contentType',
  response_topic: 'responseTopic',
  correlation_data: 'correlationData',
  subscription_identifier: 'subscriptionIdentifier',
  session_expiry_interval: 'sessionExpiryInterval',
  assigned_client_identifier: 'assignedClientIdentifier',
  server_keep_alive: 'serverKeepAlive',
  authentication_method: 'authenticationMethod',
  authentication_data: 'authenticationData',
  request_problem_information: 'requestProblemInformation',
  will_delay_interval: 'willDelayInterval',
  request_response_information: 'requestResponseInformation',
  response_information: 'responseInformation',
  server_reference: 'serverReference',
  reason_string: 'reasonString',
  receive_maximum: 'receiveMaximum',
  topic_alias_maximum: 'topicAliasMaximum',
  topic_alias: 'topicAlias',
  maximum_qos: 'maximumQoS',
  retain_available: 'retainAvailable',
  user_property: 'userProperties',
  maximum_packet_size: 'maximumPacketSize',
  wildcard_subscription_available: 'wildcardSubscriptionAvailable',
  subscription_identifier_available: 'subscriptionIdentifiersAvailable',
  shared_subscription_available: 'sharedSubscriptionAvailable'
}
const BINARY = new Set(['correlation_data', 'authentication_data'])
// Flags that the spec encodes as a byte and MQTT.js exposes as booleans.
const BOOLEAN = new Set([
  'payload_format_indicator', 'request_problem_information',
  'request_response_information', 'retain_available',
  'wildcard_subscription_available', 'subscription_identifier_available',
  'shared_subscription_available'
])

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ ...fields, event }) + '\n')
}

function propsToJson (props) {
  const out = {}
  if (!props) return out
  for (const [snake, camel] of Object.entries(CAMEL)) {
    if (props[camel] === undefined) continue
    let value = props[camel]
    if (BINARY.has(snake)) {
      value = Buffer.from(value).toString('hex')
    } else if (BOOLEAN.has(snake)) {
      value = value ? 1 : 0
    } else if (snake === 'user_property') {
      // MQTT.js folds user properties into an object (a repeated key becomes an
      // array), so the order of interleaved keys is lost; this is the closest list.
      const pairs = []
      for (const [k, v] of Object.entries(value)) {
        for (const one of Array.isArray(v) ? v : [v]) pairs.push([k, one])
      }
      value = pairs
    } else if (snake === 'subscription_identifier' && !Array.isArray(value)) {
      value = [value]
    }
    out[snake] = value
  }
  return out
}

function propsFromJson (spec) {
  if (!spec) return undefined
  const out = {}
  for (const [snake, value] of Object.entries(spec)) {
    const camel = CAMEL[snake]
    if (camel === undefined) throw new Error(`unknown property ${snake}`)
    if (BINARY.has(snake)) {
      out[camel] = Buffer.from(value, 'hex')
    } else if (BOOLEAN.has(snake)) {
      out[camel] = Boolean(value)
    } else if (snake === 'user_property') {
      const obj = {}
      for (const [k, v] of value) {
        if (obj[k] === undefined) obj[k] = v
        else if (Array.isArray(obj[k])) obj[k].push(v)
        else obj[k] = [obj[k], v]
      }
      out[camel] = obj
    } else {
      out[camel] = value
    }
  }
  return out
}

function withTimeout (what, start) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), OP_TIMEOUT_MS)
    start((err, value) => {
      clearTimeout(timer)
      if (err) reject(err)
      else resolve(value)
    })
  })
}

let client = null
let closing = false
// The last CONNACK / SUBACK / UNSUBACK seen on the wire. Commands run one at a time,
// so the latest one answers the command in progress; reading the packet itself gives
// the exact codes whatever MQTT.js makes of them.
let lastConnack = null
let lastSuback = null
let lastUnsuback = null

const ops = {
  async connect (cmd) {
    const clean = cmd.clean !== undefined ? cmd.clean : true
    const options = {
      protocolVersion,
      protocolId,
      clientId: cmd.client_id || ('mqttjs-' + Math.random().toString(16).slice(2, 10)),
      clean,
      keepalive: cmd.keepalive !== undefined ? cmd.keepalive : 60,
      // A lost connection must stay lost: the tests observe takeovers and refusals,
      // which an automatic reconnect would hide.
      reconnectPeriod: 0,
      connectTimeout: OP_TIMEOUT_MS,
      resubscribe: false
    }
    if (cmd.username !== undefined) options.username = cmd.username
    if (cmd.password !== undefined) options.password = cmd.password
    if (cmd.will) {
      options.will = {
        topic: cmd.will.topic,
        payload: Buffer.from(cmd.will.payload || '', 'hex'),
        qos: cmd.will.qos || 0,
        retain: Boolean(cmd.will.retain)
      }
      if (v5 && cmd.will.props) options.will.properties = propsFromJson(cmd.will.props)
    }
    if (v5 && cmd.props) options.properties = propsFromJson(cmd.props)

    lastConnack = null
    closing = false
    await withTimeout('CONNACK', (done) => {
      const tls = flags['--cafile'] !== undefined
      const transport = {
        host,
        port,
        protocol: flags['--ws'] !== undefined ? (tls ? 'wss' : 'ws') : (tls ? 'mqtts' : 'mqtt')
      }
      if (flags['--ws'] !== undefined) transport.path = flags['--ws']
      if (tls) {
        transport.ca = fs.readFileSync(flags['--cafile'])
        transport.rejectUnauthorized = true
        if (flags['--cert'] !== undefined) {
          transport.cert = fs.readFileSync(flags['--cert'])
          transport.key = fs.readFileSync(flags['--key'])
        }
      }
      client = mqtt.connect({ ...transport, ...options })
      let settled = false
      const settle = () => { if (!settled) { settled = true; done(null) } }
      client.on('packetreceive', (packet) => {
        if (packet.cmd === 'connack') {
          // Reported as it arrives so that events keep the order of the wire.
          lastConnack = packet
          emit('connack', {
            reason_code: v5 ? (packet.reasonCode || 0) : (packet.returnCode || 0),
            session_present: Boolean(packet.sessionPresent),
            props: v5 ? propsToJson(packet.properties) : {}
          })
          settle()
        } else if (packet.cmd === 'suback') lastSuback = packet
        else if (packet.cmd === 'unsuback') lastUnsuback = packet
        else if (packet.cmd === 'disconnect') {
          emit('server_disconnect', { reason_code: packet.reasonCode || 0, props: propsToJson(packet.properties) })
        }
      })
      client.on('message', (topic, payload, packet) => {
        emit('message', {
          topic,
          payload: payload.toString('hex'),
          qos: packet.qos,
          retain: Boolean(packet.retain),
          dup: Boolean(packet.dup),
          props: v5 ? propsToJson(packet.properties) : {}
        })
      })
      client.on('error', (err) => {
        // A refused CONNACK also arrives as an error; it was reported as a connack.
        if (!lastConnack) emit('client_error', { message: String(err.message || err) })
      })
      client.on('close', () => {
        if (!closing) emit('connection_lost', { reason: lastConnack ? 'closed' : 'closed before CONNACK' })
        settle()
      })
    })
  },

  async subscribe (cmd) {
    const topics = {}
    for (const s of cmd.subs) {
      topics[s.filter] = v5
        ? { qos: s.qos || 0, nl: Boolean(s.nl), rap: Boolean(s.rap), rh: s.rh || 0 }
        : { qos: s.qos || 0 }
    }
    const opts = {}
    if (v5 && cmd.props) opts.properties = propsFromJson(cmd.props)
    lastSuback = null
    // A refused subscription is an error for MQTT.js; the SUBACK still says why.
    await withTimeout('SUBACK', (done) => client.subscribe(topics, opts, () => done(null)))
    if (!lastSuback) throw new Error('subscribe finished without a SUBACK')
    emit('suback', { reason_codes: lastSuback.granted })
  },

  async unsubscribe (cmd) {
    lastUnsuback = null
    await withTimeout('UNSUBACK', (done) => client.unsubscribe(cmd.filters, (err) => done(err)))
    emit('unsuback', { reason_codes: (lastUnsuback && lastUnsuback.granted) || [] })
  },

  async publish (cmd) {
    const opts = { qos: cmd.qos || 0, retain: Boolean(cmd.retain) }
    if (v5 && cmd.props) opts.properties = propsFromJson(cmd.props)
    const payload = Buffer.from(cmd.payload || '', 'hex')
    let reasonCode = 0
    if (cmd.wait === false) {
      // Handed to MQTT.js, acknowledgement not awaited (the broker may drop us).
      client.publish(cmd.topic, payload, opts, () => {})
    } else {
      await withTimeout('publish completion', (done) => client.publish(cmd.topic, payload, opts, (err) => {
        // A 5.0 PUBACK or PUBREC refusing the message completes it too; MQTT.js makes
        // it an error carrying the reason code, which the test reads.
        if (err && typeof err.code === 'number') {
          reasonCode = err.code
          done(null)
        } else {
          done(err)
        }
      }))
    }
    emit('published', { reason_code: reasonCode })
  },

  // Publishes count messages whose payloads are their index in decimal, padded with
  // '.' to payload_size bytes; answers when the last one completed.
  async publish_many (cmd) {
    const size = cmd.payload_size || 0
    const all = []
    for (let i = 0; i < cmd.count; i++) {
      const payload = Buffer.from(String(i).padEnd(size, '.'))
      all.push(withTimeout(`publish ${i}`, (done) => client.publish(cmd.topic, payload, { qos: cmd.qos || 0 }, (err) => done(err))))
    }
    await Promise.all(all)
    emit('published_many', { count: cmd.count })
  },

  async disconnect (cmd) {
    closing = true
    const opts = {}
    if (v5) {
      opts.reasonCode = cmd.reason_code || 0
      if (cmd.props) opts.properties = propsFromJson(cmd.props)
    }
    await withTimeout('disconnect', (done) => client.end(false, opts, () => done(null)))
    emit('disconnected', {})
  }
}

// Commands are chained so each starts when the previous one has answered.
let chain = Promise.resolve()
const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (!line.trim()) return
  const cmd = JSON.parse(line)
  chain = chain.then(async () => {
    const op = ops[cmd.op]
    try {
      if (!op) throw new Error(`unknown op ${cmd.op}`)
      await op(cmd)
    } catch (err) {
      emit('error', { op: cmd.op, message: String((err && err.message) || err) })
    }
  })
})
// The test closes stdin when it is done with this client.
rl.on('close', () => { chain.then(() => process.exit(0)) })
emit('started')
