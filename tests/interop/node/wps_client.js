'use strict';
// A Microsoft @azure/web-pubsub-client peer for the interop tests
// (tests/interop/test_webpubsub_node_sdk.py, tests/interop/test_webpubsub_recovery.py).
//
//   node wps_client.js '<json config>'
//
// config: connectionString (its Endpoint is where the client connects: the hub, or a proxy in
// front of it), hub, user, roles (array), groups (optional, joined by the token), timeoutMs
// (watchdog), protocol ("reliable", the default, or "json"), clientOptions (optional, merged
// into the WebPubSubClient options: keepAliveIntervalInMs, messageRetryOptions, …).
//
// The client URL is minted by @azure/web-pubsub's WebPubSubServiceClient.getClientAccessToken,
// afresh on every call of the client's credential callback (each one is reported as "token").
//
// Commands come as JSON lines on stdin, each with an "id" answered by a "result" line:
//   {"cmd":"join","group":g}  {"cmd":"leave","group":g}
//   {"cmd":"send","group":g,"dataType":"text"|"json"|"binary","data":…,"noEcho":bool}
//       (binary data is base64)
//   {"cmd":"publish","group":g,"from":n,"count":k,"intervalMs":ms}: sends the numbers
//       n … n+k-1 as text one after another, each waiting for its ack
//   {"cmd":"event","event":name,"dataType":…,"data":…}
//   {"cmd":"stop"}: stops the client; the process exits after "stopped"
// Everything is printed as one JSON object per line on stdout:
//   {"event":"started"}  {"event":"token","n":…}  {"event":"connected","connectionId":…,"userId":…}
//   {"event":"group-message","group":…,"dataType":…,"data":…,"fromUserId":…,"sequenceId":…}
//   {"event":"server-message",…}  {"event":"disconnected","connectionId":…,"message":…}
//   {"event":"rejoin-group-failed","group":…,"error":…}  {"event":"stopped"}
//   {"event":"result","id":…,"ok":true|false,"error":{"name":…,"message":…}}
//   {"event":"error","message":…}
const readline = require('readline');
const {
  WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol,
} = require('@azure/web-pubsub-client');
const { WebPubSubServiceClient } = require('@azure/web-pubsub');

const config = JSON.parse(process.argv[2]);
const timeoutMs = config.timeoutMs || 30000;

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describeError(e) {
  if (e === undefined || e === null) return { name: String(e), message: '' };
  const detail = e.errorDetail;
  if (detail) return { name: detail.name || '', message: detail.message || '', kind: e.name };
  return { name: e.name || 'Error', message: e.message || String(e) };
}

function encodeData(dataType, data) {
  if (dataType === 'binary' || dataType === 'protobuf') {
    return Buffer.from(data).toString('base64');
  }
  return data;
}

function decodeData(dataType, data) {
  if (dataType !== 'binary') return data;
  const bytes = Buffer.from(data, 'base64');
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
}

const service = new WebPubSubServiceClient(config.connectionString, config.hub);
let tokens = 0;

async function clientAccessUrl() {
  tokens += 1;
  report({ event: 'token', n: tokens });
  const token = await service.getClientAccessToken({
    userId: config.user, roles: config.roles || [], groups: config.groups,
  });
  return token.url;
}

const options = Object.assign({
  protocol: config.protocol === 'json' ? WebPubSubJsonProtocol() : WebPubSubJsonReliableProtocol(),
}, config.clientOptions || {});
const client = new WebPubSubClient({ getClientAccessUrl: clientAccessUrl }, options);

client.on('connected', (e) => {
  report({ event: 'connected', connectionId: e.connectionId, userId: e.userId });
});
client.on('disconnected', (e) => {
  report({ event: 'disconnected', connectionId: e.connectionId, message: e.message || null });
});
client.on('stopped', () => {
  report({ event: 'stopped' });
  setImmediate(() => process.exit(0));
});
client.on('group-message', (e) => {
  const m = e.message;
  report({
    event: 'group-message', group: m.group, dataType: m.dataType,
    data: encodeData(m.dataType, m.data), fromUserId: m.fromUserId,
    sequenceId: m.sequenceId === undefined ? null : m.sequenceId,
  });
});
client.on('server-message', (e) => {
  const m = e.message;
  report({
    event: 'server-message', dataType: m.dataType, data: encodeData(m.dataType, m.data),
    sequenceId: m.sequenceId === undefined ? null : m.sequenceId,
  });
});
client.on('rejoin-group-failed', (e) => {
  report({ event: 'rejoin-group-failed', group: e.group, error: describeError(e.error) });
});

async function publish(command) {
  for (let i = 0; i < command.count; i += 1) {
    await client.sendToGroup(command.group, String(command.from + i), 'text',
      { noEcho: command.noEcho !== false });
    if (command.intervalMs) await new Promise((r) => setTimeout(r, command.intervalMs));
  }
}

async function run(command) {
  switch (command.cmd) {
    case 'join': return client.joinGroup(command.group);
    case 'leave': return client.leaveGroup(command.group);
    case 'send':
      return client.sendToGroup(command.group, decodeData(command.dataType, command.data),
        command.dataType, { noEcho: Boolean(command.noEcho) });
    case 'publish': return publish(command);
    case 'event':
      return client.sendEvent(command.event, decodeData(command.dataType, command.data),
        command.dataType);
    case 'stop': return client.stop();
    default: throw new Error(`unknown command ${command.cmd}`);
  }
}

function obey(line) {
  if (!line.trim()) return;
  let command;
  try {
    command = JSON.parse(line);
  } catch (e) {
    report({ event: 'error', message: `bad command line: ${line}` });
    return;
  }
  // Commands run concurrently; each reports its own result.
  Promise.resolve().then(() => run(command)).then(
    () => report({ event: 'result', id: command.id, cmd: command.cmd, ok: true }),
    (e) => report({
      event: 'result', id: command.id, cmd: command.cmd, ok: false, error: describeError(e),
    }),
  );
}

const watchdog = setTimeout(() => {
  report({ event: 'error', message: `watchdog: ${timeoutMs} ms` });
  process.exit(3);
}, timeoutMs);
watchdog.unref();

process.on('unhandledRejection', (e) => report({ event: 'error', message: String(e) }));

client.start().then(() => {
  report({ event: 'started' });
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', obey);
  // stdin closed (the test is gone): stop, and exit even if stopping hangs.
  rl.on('close', () => {
    client.stop();
    setTimeout(() => process.exit(0), 2000).unref();
  });
}, (e) => {
  report({ event: 'start-failed', error: describeError(e) });
  process.exit(2);
});
