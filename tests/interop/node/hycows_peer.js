'use strict';
// A Microsoft hyco-ws@1.0.5 peer for the interop tests (tests/interop/test_hycows_*.py).
//
//   node hycows_peer.js '<json config>'
//
// config.mode: "listen" (an echo listener that runs until SIGTERM or stdin closes), "send" (a
// sender that sends config.messages, waits for config.expect replies, closes) or "pair" (both
// in one process: the sender starts once the listener is listening, then both close).
// Everything that happens is printed as one JSON object per line on stdout:
//   {"event":"listening","n":1}  {"event":"connection","url":…,"protocol":…}
//   {"event":"open","protocol":…}  {"event":"message","text":…} / {"binary":"<base64>"}
//   {"event":"close","code":…}  {"event":"error","message":…}  {"event":"token","n":…}
//
// URLs are built by the caller: hyco-ws's createRelay*Uri helpers force wss://…:443
// (hybrid-connections-wire §5.1). A watchdog ends the process after config.timeoutMs.
const WebSocket = require('hyco-ws');

const config = JSON.parse(process.argv[2]);
const timeoutMs = config.timeoutMs || 20000;

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describe(e) {
  if (e === undefined || e === null) return String(e);
  if (typeof e === 'string') return e;
  if (e.message) return e.message;
  if (e.type) return e.type + (e.target && e.target.url ? ' ' + e.target.url : '');
  return String(e);
}

// hyco-ws renews a function token with setInterval(…, 1 hour); the renewal test shortens that.
if (config.renewMs) {
  const realSetInterval = global.setInterval;
  global.setInterval = function (fn, ms, ...rest) {
    return realSetInterval(fn, ms >= 3600000 ? config.renewMs : ms, ...rest);
  };
}

function token(uri) {
  // expirationSeconds as the caller asks (the renewal test uses short-lived tokens).
  return WebSocket.createRelayToken(uri, config.keyName, config.key, config.tokenTtl || 3600);
}

function decode(m) {
  return (typeof m === 'string') ? m : Buffer.from(m.binary, 'base64');
}

function encodeMessage(data, flags) {
  if (flags && flags.binary) return { binary: Buffer.from(data).toString('base64') };
  return { text: String(data) };
}

let server = null;
let stopping = false;

function startListener(onListening) {
  let listened = 0;
  let tokens = 0;
  const tokenOption = config.stringToken ? token(config.listenUri) : () => {
    tokens += 1;
    if (config.reportTokens) report({ event: 'token', n: tokens });
    return token(config.listenUri);
  };
  server = WebSocket.createRelayedServer({ server: config.listenUri, token: tokenOption }, (ws) => {
    // Emitted right after the rendezvous socket is created, before it opens.
    report({ event: 'connection', url: ws.url, protocol: ws.protocol || null });
    ws.on('open', () => {
      report({ event: 'rendezvous-open', protocol: ws.protocol || null });
      if (config.greeting) ws.send(config.greeting);
    });
    ws.on('message', (data, flags) => {
      const msg = encodeMessage(data, flags);
      report(Object.assign({ event: 'listener-message' }, msg));
      if (msg.binary !== undefined) ws.send(data, { binary: true });
      else ws.send('echo:' + data);
    });
    ws.on('close', (code, reason) => report({ event: 'listener-close', code, reason: reason || '' }));
    ws.on('error', (e) => report({ event: 'listener-socket-error', message: describe(e) }));
  });
  // Without an 'error' handler the first control-channel error kills Node (§4.2).
  let errors = 0;
  server.on('error', (e) => {
    errors += 1;
    if (errors <= 3) report({ event: 'error', message: describe(e) });
  });
  server.on('listening', () => {
    listened += 1;
    report({ event: 'listening', n: listened });
    if (listened === 1 && onListening) onListening();
  });
}

function startSender(done) {
  let sendUri = config.sendUri;
  const sendToken = token(config.sendUri);
  const headers = Object.assign({}, config.headers || {});
  if (config.tokenIn === 'query') {
    sendUri += (sendUri.indexOf('?') >= 0 ? '&' : '?') + 'sb-hc-token=' + encodeURIComponent(sendToken);
  } else if (config.tokenIn !== 'none') {
    headers.ServiceBusAuthorization = sendToken;
  }
  let client;
  if (config.relayedConnect) {
    client = WebSocket.relayedConnect(sendUri, sendToken, () => {});
  } else {
    const protocols = (config.protocols && config.protocols.length) ? config.protocols : null;
    client = new WebSocket(sendUri, protocols, { headers: headers });
  }
  const expect = config.expect === undefined ? (config.messages || []).length : config.expect;
  let received = 0;
  let closing = false;
  client.on('open', () => {
    report({ event: 'open', protocol: client.protocol || null });
    for (const m of (config.messages || [])) {
      const data = decode(m);
      client.send(data, { binary: typeof m !== 'string' });
    }
    if (expect === 0) { closing = true; client.close(1000, 'done'); }
  });
  client.on('message', (data, flags) => {
    received += 1;
    report(Object.assign({ event: 'message' }, encodeMessage(data, flags)));
    if (received >= expect && !closing) { closing = true; client.close(1000, 'done'); }
  });
  client.on('error', (e) => { report({ event: 'error', message: describe(e) }); done(); });
  client.on('close', (code) => { report({ event: 'close', code }); done(); });
}

function finish(status) {
  if (stopping) return;
  stopping = true;
  if (server) {
    try { server.close(); } catch (e) { /* already closed */ }
  }
  report({ event: 'exit' });
  // Give the close frames a moment to leave, then exit whatever is still open.
  setTimeout(() => process.exit(status), 200);
}

setTimeout(() => { report({ event: 'timeout' }); process.exit(3); }, timeoutMs).unref();
process.on('SIGTERM', () => finish(0));

if (config.mode === 'listen') {
  startListener(null);
  process.stdin.on('end', () => finish(0));
  process.stdin.resume();
} else if (config.mode === 'send') {
  startSender(() => finish(0));
} else if (config.mode === 'pair') {
  startListener(() => startSender(() => finish(0)));
} else {
  report({ event: 'error', message: 'unknown mode ' + config.mode });
  process.exit(2);
}
