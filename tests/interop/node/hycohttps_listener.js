'use strict';
// A Microsoft hyco-https@1.4.5 listener for the interop tests (tests/interop/test_hycohttps.py).
//
//   HYCO_RELAY=ws://127.0.0.1:PORT HYCO_KEY=... [HYCO_KEY_NAME=...] [HYCO_HC=myhc] \
//   [HYCO_TIMEOUT_MS=60000] node hycohttps_listener.js
//
// The listen URL is built by hand (the hyco-https helpers force wss://…:443,
// hybrid-connections-wire §5.1). Everything the listener sees is printed as one JSON object per
// line on stdout:
//   {"event":"listening","n":1}
//   {"event":"request-start","n":…,"method":…,"url":…,"headers":{…},"rendezvous":bool}
//     as soon as hyco-https emits 'request' (before the body);
//   {"event":"request","n":…,"method":…,"url":…,"headers":{…},"rendezvous":bool,
//    "bodyLength":…,"bodySha256":…}   once the request body has ended;
//   {"event":"req-aborted"|"req-close"|"res-close"|"res-finish","n":…,"complete":bool,
//    "received":…}                    the request's / response's events;
//   {"event":"rendezvous-close","n":…,"code":…,"reason":…,"complete":bool,"received":…}
//     when the rendezvous WebSocket a request came on closes;
//   {"event":"error","message":…}
//
// Routes (the first path segment after /{hc}; the rest of the path is free):
//   /hello           200 text "hello <req.url>"
//   /echo            200, body: JSON {"length","sha256"} of the request body
//   /big?size=N      200, N bytes of pattern(N) written in 64 KiB pieces (pattern: the first N
//                    bytes of SHAKE256("hyco-pattern"), as the tests compute it)
//   /nocontent       204 with X-Empty: yes
//   /cookies         two Set-Cookie values (setHeader with an array) and other headers
//   /created         writeHead(201, {...}) with a JSON body
//   /empty           200 with res.end() and no data
//   /reason          writeHead(200, 'Fine Thanks', {...})
//   /notmodified     304 with an ETag
//   /pieces?size=N   pattern(N) in 1000-byte writes (N under 64 KiB: on the control channel)
//   /silent          never answers
//   /hold            answers only once the request body has ended (for the abort test)
//   HEAD (any path)  200 with X-Head: yes and no body
// The process ends on SIGTERM, when stdin closes, or after HYCO_TIMEOUT_MS (a watchdog).
const https = require('hyco-https');
const crypto = require('crypto');

const base = process.env.HYCO_RELAY;
const key = process.env.HYCO_KEY;
const keyName = process.env.HYCO_KEY_NAME || 'RootManageSharedAccessKey';
const hc = process.env.HYCO_HC || 'myhc';
const timeoutMs = parseInt(process.env.HYCO_TIMEOUT_MS || '60000', 10);

function report(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

if (!base || !key) {
  report({ event: 'error', message: 'HYCO_RELAY and HYCO_KEY are required' });
  process.exit(2);
}

function describe(e) {
  if (e === undefined || e === null) return String(e);
  if (typeof e === 'string') return e;
  if (e.message) return e.message;
  if (e.type) return e.type + (e.target && e.target.url ? ' ' + e.target.url : '');
  return String(e);
}

function pattern(size) {
  if (size === 0) return Buffer.alloc(0);
  return crypto.createHash('shake256', { outputLength: size }).update('hyco-pattern').digest();
}

const listenUri = base + '/$hc/' + hc + '?sb-hc-action=listen';
let count = 0;

function respond(req, res, route, query, body) {
  if (req.method === 'HEAD') {
    res.writeHead(200, { 'X-Head': 'yes', 'Content-Type': 'text/plain' });
    res.end();
    return;
  }
  switch (route) {
    case '/hello':
      res.setHeader('Content-Type', 'text/plain');
      res.end('hello ' + req.url);
      return;
    case '/echo':
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ length: body.length, sha256: body.sha256 }));
      return;
    case '/big': {
      const size = parseInt(query.get('size') || '0', 10);
      const data = pattern(size);
      res.setHeader('Content-Type', 'application/octet-stream');
      for (let at = 0; at < size; at += 65536) res.write(data.subarray(at, at + 65536));
      res.end();
      return;
    }
    case '/nocontent':
      res.writeHead(204, { 'X-Empty': 'yes' });
      res.end();
      return;
    case '/cookies':
      res.setHeader('Set-Cookie', ['a=1; Path=/', 'b=2; HttpOnly']);
      res.setHeader('X-Custom', 'custom value');
      res.setHeader('Cache-Control', 'no-store');
      res.setHeader('Content-Type', 'text/plain; charset=utf-8');
      res.end('cookies');
      return;
    case '/created':
      res.writeHead(201, { 'Location': '/' + hc + '/items/1', 'X-Created': 'yes',
        'Content-Type': 'application/json' });
      res.end('{"id":1}');
      return;
    case '/empty':
      res.end();  // hyco-https: "body":true and an empty binary message (§3.3 quirk 1)
      return;
    case '/reason':
      res.writeHead(200, 'Fine Thanks', { 'Content-Type': 'text/plain' });
      res.end('reason');
      return;
    case '/notmodified':
      res.writeHead(304, { 'ETag': '"v1"' });
      res.end();
      return;
    case '/pieces': {
      // Several writes under 64 KiB: one fragmented binary message on the control channel.
      const data = pattern(parseInt(query.get('size') || '0', 10));
      res.setHeader('Content-Type', 'application/octet-stream');
      for (let at = 0; at < data.length; at += 1000) res.write(data.subarray(at, at + 1000));
      res.end();
      return;
    }
    case '/silent':
      return;  // never answers: the relay's timeout answers the sender
    case '/hold':
      res.end('held ' + body.length);
      return;
    default:
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('no route ' + route);
  }
}

const server = https.createRelayedServer({
  server: listenUri,
  token: () => https.createRelayToken(listenUri, keyName, key),
}, (req, res) => {
  count += 1;
  const n = count;
  const parsed = new URL(req.url, 'http://listener');
  const prefix = '/' + hc;
  const rest = parsed.pathname.startsWith(prefix) ? parsed.pathname.slice(prefix.length) : parsed.pathname;
  const route = '/' + (rest.split('/')[1] || '');  // /hello/a/b routes as /hello
  // hyco-https makes req.socket the rendezvous WebSocket for a request that came on one, the
  // control channel otherwise.
  const rendezvous = req.socket !== server.controlChannel;
  const head = { n, method: req.method, url: req.url, headers: req.headers, rendezvous };
  report(Object.assign({ event: 'request-start' }, head));

  const hash = crypto.createHash('sha256');
  let received = 0;
  let complete = false;
  const state = () => ({ n, complete, received });
  req.on('data', (chunk) => { received += chunk.length; hash.update(chunk); });
  req.on('end', () => {
    complete = true;
    const body = { length: received, sha256: hash.digest('hex') };
    report(Object.assign({ event: 'request', bodyLength: body.length, bodySha256: body.sha256 }, head));
    respond(req, res, route, parsed.searchParams, body);
  });
  req.on('aborted', () => report(Object.assign({ event: 'req-aborted' }, state())));
  req.on('close', () => report(Object.assign({ event: 'req-close' }, state())));
  req.on('error', (e) => report(Object.assign({ event: 'req-error', message: describe(e) }, state())));
  res.on('close', () => report(Object.assign({ event: 'res-close' }, state())));
  res.on('finish', () => report(Object.assign({ event: 'res-finish' }, state())));
  if (rendezvous && req.socket && typeof req.socket.on === 'function') {
    req.socket.on('close', (code, reason) => report(Object.assign(
      { event: 'rendezvous-close', code, reason: String(reason || '') }, state())));
  }
});

// Without an 'error' handler the first control-channel error kills Node.
let errors = 0;
server.on('error', (e) => {
  errors += 1;
  if (errors <= 5) report({ event: 'error', message: describe(e) });
});
let listened = 0;
server.on('listening', () => {
  listened += 1;
  report({ event: 'listening', n: listened });
});
server.listen();

let stopping = false;
function finish() {
  if (stopping) return;
  stopping = true;
  try { server.close(); } catch (e) { /* already closed */ }
  report({ event: 'exit' });
  setTimeout(() => process.exit(0), 200);
}

setTimeout(() => { report({ event: 'timeout' }); process.exit(3); }, timeoutMs).unref();
process.on('SIGTERM', finish);
process.stdin.on('end', finish);
process.stdin.resume();
