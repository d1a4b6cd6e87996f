// The node:http baseline: a plain, idiomatic static server for an OCI image layout, with the same
// URL shape as the registry (`/v2/<name>/{blobs|manifests}/sha256:<hex>`, query ignored).
// Every request stats the file and streams it with fs.createReadStream (default 64 KiB reads)
// piped into the response, as most Node file servers do. No caching, no Range (the benchmark
// sends none). Usage: node node-http-server.js <layout dir> <host> <port>; prints
// `{"port":N}` on stdout once listening.

import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream';

const [layout, host = '127.0.0.1', portArg = '0'] = process.argv.slice(2);
if (!layout) {
  process.stderr.write('usage: node-http-server <layout dir> [host] [port]\n');
  process.exit(2);
}

const PATH_RE = /^\/v2\/[a-z0-9._/-]+\/(blobs|manifests)\/sha256:([0-9a-f]{64})$/;

/** Media types of the manifests index.json names (the benchmark serves only those by digest). */
const manifestTypes = new Map<string, string>();
const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; mediaType: string }[] };
for (const m of index.manifests) manifestTypes.set(m.digest, m.mediaType);

function notFound(res: http.ServerResponse, code: string): void {
  const body = JSON.stringify({ errors: [{ code, message: 'not found' }] });
  res.writeHead(404, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const q = req.url!.indexOf('?');
  const m = PATH_RE.exec(q < 0 ? req.url! : req.url!.slice(0, q));
  if (!m || (req.method !== 'GET' && req.method !== 'HEAD')) return notFound(res, 'NAME_UNKNOWN');
  const [, endpoint, hex] = m;
  const digest = `sha256:${hex}`;
  const manifestType = manifestTypes.get(digest);
  if (endpoint === 'manifests' && !manifestType) return notFound(res, 'MANIFEST_UNKNOWN');
  const file = path.join(layout, 'blobs', 'sha256', hex!);
  stat(file).then(
    (st) => {
      res.writeHead(200, {
        'Content-Type': endpoint === 'manifests' ? manifestType : 'application/octet-stream',
        'Content-Length': st.size,
        'Docker-Content-Digest': digest,
        ...(endpoint === 'blobs' ? { 'Accept-Ranges': 'bytes' } : {}),
      });
      if (req.method === 'HEAD') return void res.end();
      pipeline(createReadStream(file), res, () => undefined);
    },
    () => notFound(res, endpoint === 'blobs' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN'),
  );
});

server.listen(Number(portArg), host, () => {
  const addr = server.address();
  process.stdout.write(JSON.stringify({ port: typeof addr === 'object' && addr ? addr.port : 0 }) + '\n');
});

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  process.on(sig, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
