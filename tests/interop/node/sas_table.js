'use strict';
// Reads a JSON array of cases on stdin and prints, as JSON, what Microsoft's hyco-ws makes of
// each: {fn: "create" | "append" | "listenUri" | "sendUri" | "resource", ...}. Date.now is
// pinned to each case's nowMs so tokens are reproducible. Used by tests/test_sas_node.py.
const url = require('url');
const WS = require('hyco-ws');

const realNow = Date.now;

function runCase(c) {
  Date.now = () => c.nowMs;
  try {
    switch (c.fn) {
      case 'create':
        return { ok: WS.createRelayToken(c.uri, c.keyName, c.key, c.expirationSeconds) };
      case 'append':
        return { ok: WS.appendRelayToken(c.uri, c.keyName, c.key, c.expirationSeconds) };
      case 'listenUri':
        return { ok: WS.createRelayListenUri(c.namespace, c.path, c.token, c.id) };
      case 'sendUri':
        return { ok: WS.createRelaySendUri(c.namespace, c.path, c.token, c.id) };
      case 'resource': {
        // The resource normalisation inside createRelayToken, on its own.
        const p = url.parse(c.uri);
        p.protocol = 'http';
        p.search = p.hash = p.port = null;
        p.pathname = p.pathname.replace('$hc/', '');
        return { ok: url.format(p) };
      }
      default:
        return { error: 'unknown fn ' + c.fn };
    }
  } catch (e) {
    return { error: String(e && e.message || e) };
  } finally {
    Date.now = realNow;
  }
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const cases = JSON.parse(input);
  process.stdout.write(JSON.stringify(cases.map(runCase)));
});
