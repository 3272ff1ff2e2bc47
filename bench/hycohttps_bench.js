// Microsoft's hyco-https listener with the HTTP benchmark's routes (bench/http_servers.py).
// Usage: node hycohttps_bench.js ws://127.0.0.1:PORT/$hc/bench?sb-hc-action=listen
// NODE_PATH must point at tests/interop/node/node_modules. Exits when stdin closes.
const https = require('hyco-https');

const url = process.argv[2];
const keyName = 'RootManageSharedAccessKey';
const key = 'hyco-proto-development-key-do-not-use-in-production=';
const payload = Buffer.alloc(8 * 1024 * 1024, 0x5a);

const server = https.createRelayedServer(
  { server: url, token: () => https.createRelayToken(url.split('?')[0], keyName, key) },
  (req, res) => {
    let size = 0;
    req.on('data', (d) => { size += d.length; });
    req.on('end', () => {
      res.setHeader('Content-Type', 'application/octet-stream');
      if (req.url.endsWith('/upload')) res.end(String(size));
      else if (req.url.endsWith('/download')) res.end(payload);
      else res.end('ok');
    });
  });
server.on('error', (e) => console.error('listener error', e && (e.message || e)));
server.listen();
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
