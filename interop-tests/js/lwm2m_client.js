// An LwM2M device on lwm2m-node-lib's client, driven line by line from stdin so that a
// test can pace it: `set OBJ_URI RESOURCE VALUE`, `update`, `deregister`. Everything the
// library reports goes to stdout as one line per event.
//
// Usage: node lwm2m_client.js HOST PORT ENDPOINT [LIFETIME [QUERY]]; QUERY (e.g.
// `imei=alice&password=secret`) is added to the registration's queries.
'use strict';

const readline = require('readline');
const client = require('lwm2m-node-lib').client;

const [host, port, endpoint, lifetime, query] = process.argv.slice(2);
// The library writes the endpoint name into the registration query as it is, and has no
// other way to add a query; what follows `&` becomes queries of their own.
const registered = query ? endpoint + '&' + query : endpoint;

function say(line) {
    process.stdout.write(line + '\n');
}

client.init({
    client: {
        lifetime: lifetime || '60',
        version: '1.0',
        logLevel: 'FATAL',
        observe: { period: 3000 },
        ipProtocol: 'udp4',
        serverProtocol: 'udp4',
        formats: [],
        writeFormat: 'text/plain'
    }
});

const objects = [
    ['/3/0', [[0, 'Open Mobile Alliance'], [1, 'Lightweight M2M Client'], [9, '87'], [14, '+01:00']]],
    ['/3303/0', [[5700, '21.5'], [5701, 'Cel']]]
];

let device = null;

function create(index, done) {
    if (index >= objects.length) {
        return done();
    }
    const [uri, resources] = objects[index];
    client.registry.create(uri, (error) => {
        if (error) {
            throw error;
        }
        let pending = resources.length;
        for (const [id, value] of resources) {
            client.registry.setResource(uri, id, value, () => {
                pending -= 1;
                if (pending === 0) {
                    create(index + 1, done);
                }
            });
        }
    });
}

create(0, () => {
    client.register(host, Number(port), null, registered, (error, info) => {
        if (error) {
            // A refusal carries the response code.
            say('error register ' + (error.code || error));
            process.exit(1);
        }
        device = info;
        for (const kind of ['write', 'execute']) {
            client.setHandler(info.serverInfo, kind, (objectType, objectId, resourceId, value, callback) => {
                say(`${kind} /${objectType}/${objectId}/${resourceId} ${value}`);
                callback(null);
            });
        }
        say('registered ' + info.location);
    });
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const [verb, ...args] = line.trim().split(' ');
    if (verb === 'set') {
        client.registry.setResource(args[0], args[1], args.slice(2).join(' '), () => say('set done'));
    } else if (verb === 'update') {
        client.update(device, (error) => say(error ? 'error update ' + error : 'updated'));
    } else if (verb === 'deregister') {
        client.unregister(device, (error) => {
            say(error ? 'error deregister ' + error : 'deregistered');
            process.exit(0);
        });
    }
});
