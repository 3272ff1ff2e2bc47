'use strict';
// Microsoft's hyco-ws@1.0.5 as a plain echo listener, for the conformance checklist through our
// relay (tests/interop/test_hycows_checklist.py).
//
//   node hycows_echo.js '<json config>'     config: {listenUri, keyName, key, timeoutMs}
//
// Every message is sent back unchanged, text as text and binary as binary (the checklist's
// "echo"). Pings, pongs and closes are left to hyco-ws's WebSocket (ws 1.1.5), which answers
// pings and close frames itself. Messages are not printed (category 9 sends up to 16 MiB);
// one JSON line per connection event:
//   {"event":"listening"}  {"event":"connection","n":…}  {"event":"listener-close","n":…,"code":…}
//   {"event":"listener-socket-error","n":…,"message":…}  {"event":"error","message":…}
// The process ends when stdin closes, on SIGTERM, or after config.timeoutMs (a watchdog).
const WebSocket = require('hyco-ws');

const config = JSON.parse(process.argv[2]);

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describe(e) {
  if (e === undefined || e === null) return String(e);
  if (typeof e === 'string') return e;
  return e.message || String(e);
}

let connections = 0;
const server = WebSocket.createRelayedServer({
  server: config.listenUri,
  token: () => WebSocket.createRelayToken(config.listenUri, config.keyName, config.key, 3600),
}, (ws) => {
  connections += 1;
  const n = connections;
  report({ event: 'connection', n });
  ws.on('message', (data, flags) => {
    try {
      ws.send(data, { binary: Boolean(flags && flags.binary) });
    } catch (e) {
      report({ event: 'listener-socket-error', n, message: describe(e) });
    }
  });
  ws.on('close', (code) => report({ event: 'listener-close', n, code }));
  ws.on('error', (e) => report({ event: 'listener-socket-error', n, message: describe(e) }));
});
server.on('listening', () => report({ event: 'listening' }));
server.on('error', (e) => report({ event: 'error', message: describe(e) }));

function stop(code) {
  try { server.close(); } catch (e) { /* already closed */ }
  setTimeout(() => process.exit(code), 200);
}

process.stdin.on('end', () => stop(0));
process.stdin.resume();
process.on('SIGTERM', () => stop(0));
setTimeout(() => { report({ event: 'error', message: 'watchdog' }); stop(3); },
  config.timeoutMs || 600000).unref();
