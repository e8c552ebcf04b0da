// An LwM2M device on coap-node (with smartobject for its objects), driven line by line
// from stdin so that a test can pace it: `set OID IID RID VALUE` changes a resource as
// the device itself would, `dump OID` prints an object's instances as JSON. What the
// library reports goes to stdout, one line per event.
//
// Usage: node lwm2m_coap_node.js HOST PORT ENDPOINT [LIFETIME [QUERY]]; QUERY (e.g.
// `imei=alice&password=secret`) is added to the registration's queries.
'use strict';

const readline = require('readline');
const CoapNode = require('coap-node');
const SmartObject = require('smartobject');

const [host, port, endpoint, lifetime, query] = process.argv.slice(2);

function say(line) {
    process.stdout.write(line + '\n');
}

const so = new SmartObject();
so.init(3303, 0, { 5700: 21.5, 5701: 'Cel' });
so.init(3311, 0, { 5850: true, 5851: 40 });

// coap-node writes the client name into the registration query as it is, and has no
// other way to add a query; what follows `&` becomes queries of their own.
const node = new CoapNode(query ? endpoint + '&' + query : endpoint, so, {
    lifetime: Number(lifetime || '60'),
    version: '1.0',
    manuf: 'Open Mobile Alliance',
    model: 'coap-node'
});
node.on('error', (error) => say('error ' + error));

node.register(host, Number(port), (error, rsp) => {
    if (error) {
        say('error register ' + error);
        process.exit(1);
    }
    say('registered ' + rsp.status);
});

function number(text) {
    return /^-?[0-9.]+$/.test(text) ? Number(text) : text;
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const [verb, ...args] = line.trim().split(' ');
    if (verb === 'set') {
        const [oid, iid, rid, ...value] = args;
        so.write(Number(oid), Number(iid), Number(rid), number(value.join(' ')), (error) =>
            say(error ? 'error set ' + error : 'set done'));
    } else if (verb === 'dump') {
        so.dump(Number(args[0]), (error, data) =>
            say(error ? 'error dump ' + error : 'dump ' + JSON.stringify(data)));
    }
});
