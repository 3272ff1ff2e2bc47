'use strict';
// A plain Node `http` sender for the hyco-https interop tests (tests/interop/test_hycohttps.py).
//
//   node http_sender.js '{"url":…,"method":"POST","headers":{…},"bodySize":N,"chunked":true}'
//
// Sends one request whose body is pattern(bodySize) (the first bodySize bytes of
// SHAKE256("hyco-pattern"), as hycohttps_listener.js and the tests compute it). With "chunked",
// the body is written in 16 KiB pieces with no Content-Length, so Node uses
// Transfer-Encoding: chunked. Prints one JSON
// line: {"status","statusMessage","headers","bodyLength","bodySha256","body"(first 200 chars)}
// or {"error": message}. Exits by itself; a watchdog ends it after timeoutMs.
const http = require('http');
const crypto = require('crypto');

const config = JSON.parse(process.argv[2]);
setTimeout(() => {
  process.stdout.write(JSON.stringify({ error: 'timeout' }) + '\n');
  process.exit(3);
}, config.timeoutMs || 20000).unref();

function pattern(size) {
  if (size === 0) return Buffer.alloc(0);
  return crypto.createHash('shake256', { outputLength: size }).update('hyco-pattern').digest();
}

const body = pattern(config.bodySize || 0);
const headers = Object.assign({}, config.headers || {});
if (!config.chunked && body.length) headers['Content-Length'] = String(body.length);

const req = http.request(config.url, { method: config.method || 'GET', headers }, (res) => {
  const hash = crypto.createHash('sha256');
  const chunks = [];
  let length = 0;
  res.on('data', (d) => { length += d.length; hash.update(d); if (length <= 200) chunks.push(d); });
  res.on('end', () => {
    process.stdout.write(JSON.stringify({
      status: res.statusCode, statusMessage: res.statusMessage, headers: res.headers,
      bodyLength: length, bodySha256: hash.digest('hex'),
      body: Buffer.concat(chunks).toString('utf8').slice(0, 200),
    }) + '\n');
    process.exit(0);
  });
});
req.on('error', (e) => {
  process.stdout.write(JSON.stringify({ error: e.message }) + '\n');
  process.exit(1);
});
if (config.chunked) {
  let at = 0;
  const step = () => {
    // Pieces on separate ticks, so the relay sees a body that trickles in.
    if (at >= body.length) { req.end(); return; }
    req.write(body.subarray(at, at + 16384));
    at += 16384;
    setImmediate(step);
  };
  step();
} else {
  req.end(body.length ? body : undefined);
}
