// hyco-ws@1.0.5 depends on the npm package `http@latest`, which no longer resolves.
// Node resolves require('http') to its core module anyway; this stub only satisfies npm.
module.exports = require('node:http');
