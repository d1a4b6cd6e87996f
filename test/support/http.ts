// HTTP clients for tests: undici for ordinary requests, and a raw socket client for paths and
// headers that a normal client would normalise or refuse to send.

import { createHash } from 'node:crypto';
import net from 'node:net';
import { request } from 'undici';

export interface Response {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export async function get(url: string, headers: Record<string, string> = {}, method: 'GET' | 'HEAD' = 'GET'): Promise<Response> {
  const r = await request(url, { method, headers });
  const body = Buffer.from(await r.body.arrayBuffer());
  const h: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.headers)) h[k] = Array.isArray(v) ? v.join(', ') : String(v);
  return { status: r.statusCode, headers: h, body };
}

export function sha256(b: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

/** Sends `raw` as-is and reads until the server closes (send `Connection: close`). */
export function rawRequest(port: number, raw: string | Buffer, host = '127.0.0.1', timeoutMs = 5000): Promise<Response> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('raw request timed out'));
    }, timeoutMs);
    sock.on('data', (d) => chunks.push(d));
    sock.on('error', (e) => {
      // A reset after the server answered is fine; without an answer it is a failure.
      if (chunks.length === 0) {
        clearTimeout(timer);
        reject(e);
      }
    });
    sock.on('close', () => {
      clearTimeout(timer);
      const all = Buffer.concat(chunks);
      const end = all.indexOf('\r\n\r\n');
      if (end < 0) return resolve({ status: 0, headers: {}, body: all });
      const head = all.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number(head[0]!.split(' ')[1]);
      const headers: Record<string, string> = {};
      for (const line of head.slice(1)) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status, headers, body: all.subarray(end + 4) });
    });
    sock.write(raw);
  });
}

/**
 * Sends requests one after another on ONE connection, each once the previous answer is complete,
 * as containerd does (HEAD a tag, then GET by digest). Resolves with each answer's status, or 0
 * where the server closed the connection instead of answering.
 */
export function sameConnection(port: number, requests: { method: 'GET' | 'HEAD'; path: string }[], host = '127.0.0.1'): Promise<number[]> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host);
    const statuses: number[] = [];
    let buf = Buffer.alloc(0);
    let i = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('same-connection requests timed out'));
    }, 5000);
    const sendNext = () => {
      if (i >= requests.length) {
        clearTimeout(timer);
        sock.end();
        return resolve(statuses);
      }
      const r = requests[i]!;
      sock.write(`${r.method} ${r.path} HTTP/1.1\r\nHost: x\r\n\r\n`);
    };
    sock.on('connect', sendNext);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const len = requests[i]!.method === 'HEAD' ? 0 : Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        statuses.push(Number(head.split(' ')[1]));
        buf = buf.subarray(end + 4 + len);
        i++;
        sendNext();
        if (i >= requests.length) return;
      }
    });
    sock.on('close', () => {
      clearTimeout(timer);
      while (statuses.length < requests.length) statuses.push(0);
      resolve(statuses);
    });
    sock.on('error', () => {});
  });
}


// A free loopback port (bound, then released): also what every test hosts.toml pins its upstream
// `server` to, since nothing listens there and no pull can leave the machine.
export { freePort } from '../../src/main/storm/cluster.js';
