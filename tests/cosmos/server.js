// A Cosmos DB NoSQL API server for eventide's tests and benchmarks:
// @vercel/cosmosdb-server (in-memory, plain HTTP on loopback) with the fixes the
// Rust SDK needs (eventide writes single documents, so transactional batch is not
// fixed), and in front of it a fault-injecting proxy of our own.
//
//   node server.js <modules dir>
//
// Prints one line `READY <server port> <proxy port>` once both listen (ports picked
// by the OS). The proxy forwards everything to the server; `POST /__faults` on the
// proxy sets what it does to data-plane requests (paths with /docs), as JSON:
//   {"every": N, "kinds": ["429", "503", "drop"], "retryAfterMs": 20}
//       every Nth document request gets the next fault of `kinds` in turn
//       (429 with x-ms-retry-after-ms, 503, or a connection closed without an answer)
//   {"down": true}     every document request's connection is closed (an outage)
//   {}                 no faults
// `GET /__faults` answers the counts of what was injected and forwarded.
// SIGTERM or SIGINT stops both.

"use strict";

const path = require("path");
const http = require("http");

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node server.js <node_modules dir holding @vercel/cosmosdb-server>");
  process.exit(2);
}
const lib = path.join(modules, "@vercel", "cosmosdb-server", "lib");

// Fix 1: partition key range ids must be strings (the SDK fails to load the
// partition topology with 503/20305 when they are numbers).
const ranges = require(path.join(lib, "handler", "read-partition-key-ranges.js"));
const readRanges = ranges.default;
ranges.default = async (...args) => {
  const body = await readRanges(...args);
  for (const r of (body && body.PartitionKeyRanges) || []) {
    r.id = String(r.id);
    if (Array.isArray(r.parents)) r.parents = r.parents.map(String);
  }
  return body;
};

// Fix 2: with plain HTTP the account document must not advertise https endpoints
// (the SDK follows them).
const meta = require(path.join(lib, "handler", "read-meta.js"));
const readMeta = meta.default;
meta.default = async (...args) =>
  JSON.parse(JSON.stringify(await readMeta(...args)).replace(/https:\/\//g, "http://"));

// Fix 3: reading a document that does not exist throws a TypeError (answering 500)
// instead of answering 404 Not Found.
const read = require(path.join(lib, "handler", "read-document.js"));
const readDocument = read.default;
read.default = (account, req, res, params) => {
  try {
    return readDocument(account, req, res, params);
  } catch (err) {
    if (!(err instanceof TypeError)) throw err;
    res.statusCode = 404;
    return { code: "NotFound", message: "Entity with the specified id does not exist in the system." };
  }
};

// Not a fix: the service's own rule, which the local server does not apply. Document
// ids may not hold '/', '\\', '?' or '#' and are at most 255 characters: the service
// answers 400 Bad Request, and so does this server.
const ops = require(path.join(lib, "handler", "_document-operations.js"));
const badId = (body) => {
  const id = body && body.id;
  if (typeof id !== "string") return null;
  if (/[\/\\?#]/.test(id)) return `The input name '${id}' is invalid. Ensure to not use the following characters: '/', '\\', '?', '#'.`;
  if (id.length > 255) return `The input name '${id}' exceeds the maximum allowed length of 255 characters.`;
  return null;
};
for (const name of ["createOperation", "upsertOperation", "replaceOperation"]) {
  const op = ops[name];
  ops[name] = (collection, input) => {
    const message = badId(input && input.resourceBody);
    if (message) return { statusCode: 400, body: { code: "BadRequest", message } };
    return op(collection, input);
  };
}

// Requiring the server only now makes its routes take the fixed handlers.
const { createHttpServer } = require(path.join(lib, "index.js"));

// Fix 4: keep connections open (it closes them after each answer otherwise).
const server = createHttpServer({ keepAlive: true });
server.keepAliveTimeout = 60000;

const faults = { every: 0, kinds: ["429"], retryAfterMs: 20, down: false };
const counts = { forwarded: 0, injected: { "429": 0, "503": 0, drop: 0, down: 0 } };
let docRequests = 0;
let nextKind = 0;

function fault(req) {
  if (!req.url.includes("/docs")) return null;
  if (faults.down) return "down";
  if (!faults.every) return null;
  docRequests += 1;
  if (docRequests % faults.every !== 0) return null;
  const kind = faults.kinds[nextKind % faults.kinds.length];
  nextKind += 1;
  return kind;
}

function answer(res, status, body) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

let upstream;
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxy = http.createServer((req, res) => {
  if (req.url === "/__faults") {
    if (req.method === "GET") return answer(res, 200, counts);
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const set = JSON.parse(Buffer.concat(chunks).toString() || "{}");
      faults.every = set.every || 0;
      faults.kinds = set.kinds || ["429"];
      faults.retryAfterMs = set.retryAfterMs === undefined ? 20 : set.retryAfterMs;
      faults.down = !!set.down;
      docRequests = 0;
      answer(res, 200, faults);
    });
    return;
  }
  const kind = fault(req);
  if (kind) {
    counts.injected[kind] += 1;
    if (kind === "drop" || kind === "down") {
      req.socket.destroy();
      return;
    }
    req.resume();
    const status = Number(kind);
    const headers = { "content-type": "application/json", "x-ms-activity-id": "fault" };
    if (status === 429) {
      headers["x-ms-retry-after-ms"] = String(faults.retryAfterMs);
      headers["x-ms-substatus"] = "3200";
    }
    res.writeHead(status, headers);
    res.end(JSON.stringify({ code: status === 429 ? "TooManyRequests" : "ServiceUnavailable", message: "injected by the test proxy" }));
    return;
  }
  counts.forwarded += 1;
  const out = http.request(
    { host: "127.0.0.1", port: upstream, method: req.method, path: req.url, headers: req.headers, agent },
    (up) => {
      if (req.url !== "/") {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
        return;
      }
      // The account document names the server's own address as the endpoint to
      // use: name the proxy's instead, so that every request comes through it.
      const chunks = [];
      up.on("data", (c) => chunks.push(c));
      up.on("end", () => {
        const body = Buffer.from(
          Buffer.concat(chunks).toString().split(`127.0.0.1:${upstream}`).join(`127.0.0.1:${proxy.address().port}`),
        );
        const headers = { ...up.headers, "content-length": String(body.length) };
        delete headers["transfer-encoding"];
        res.writeHead(up.statusCode, headers);
        res.end(body);
      });
    },
  );
  out.on("error", () => req.socket.destroy());
  req.pipe(out);
});
proxy.keepAliveTimeout = 60000;

server.listen(0, "127.0.0.1", () => {
  upstream = server.address().port;
  proxy.listen(0, "127.0.0.1", () => {
    process.stdout.write(`READY ${upstream} ${proxy.address().port}\n`);
  });
});

function stop() {
  proxy.close();
  server.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
