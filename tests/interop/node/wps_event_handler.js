// An upstream event handler written with Microsoft's @azure/web-pubsub-express, for the interop
// tests: it listens on a free loopback port (printed first as {"port": N}) and prints one JSON
// line per event it receives. Behaviour, for hub argv[2]:
//   connect: userId "<sub>-via-express" and group "express-group"; a client whose query has
//            refuse=1 is refused with 401 "refused by express".
//   user event "echo": answers the same data, as text, prefixed with "echo: ".
//   connected / disconnected: printed.
// allowedEndpoints (abuse protection) is argv[3] when given, else every origin is allowed.
"use strict";
const express = require("express");
const { WebPubSubEventHandler } = require("@azure/web-pubsub-express");

const hub = process.argv[2] || "chat";
const allowed = process.argv[3];
const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const handler = new WebPubSubEventHandler(hub, {
  path: "/eventhandler",
  allowedEndpoints: allowed ? [allowed] : undefined,
  handleConnect: (req, res) => {
    print({ event: "connect", userId: req.context.userId, connectionId: req.context.connectionId,
            query: req.queries, subprotocols: req.subprotocols, claims: req.claims });
    if (req.queries && req.queries.refuse) {
      res.fail(401, "refused by express");
      return;
    }
    res.success({ userId: `${req.context.userId}-via-express`, groups: ["express-group"] });
  },
  onConnected: (req) => {
    print({ event: "connected", userId: req.context.userId, connectionId: req.context.connectionId });
  },
  onDisconnected: (req) => {
    print({ event: "disconnected", userId: req.context.userId,
            connectionId: req.context.connectionId, reason: req.reason });
  },
  handleUserEvent: (req, res) => {
    print({ event: "user", name: req.context.eventName, userId: req.context.userId,
            dataType: req.dataType, data: req.dataType === "binary"
              ? Buffer.from(req.data).toString("base64") : req.data,
            signature: req.context.signature });
    if (req.context.eventName === "echo") {
      const text = typeof req.data === "string" ? req.data : JSON.stringify(req.data);
      res.success(`echo: ${text}`, "text");
    } else {
      res.success();
    }
  },
});

const app = express();
app.use((req, _res, next) => {
  if (req.method === "OPTIONS") {
    print({ event: "preflight", origin: req.headers["webhook-request-origin"] });
  }
  next();
});
app.use(handler.getMiddleware());
const server = app.listen(0, "127.0.0.1", () => print({ port: server.address().port }));
process.stdin.on("end", () => server.close(() => process.exit(0)));
process.stdin.resume();
