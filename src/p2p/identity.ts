// The node's persistent libp2p identity: an Ed25519 key in `<data dir>/peer.key` (protobuf,
// mode 0600). Reusing it across restarts keeps the peer id stable, so provider records and
// routing tables elsewhere stay valid after a pod restart.

import { mkdir, open, readFile, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';

export const KEY_FILE = 'peer.key';

export async function loadOrCreateIdentity(dataDir: string): Promise<{ key: PrivateKey; created: boolean }> {
  const file = path.join(dataDir, KEY_FILE);
  try {
    const bytes = await readFile(file);
    const st = await stat(file);
    if ((st.mode & 0o077) !== 0) {
      throw new Error(`identity file ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}); expected 0600`);
    }
    try {
      return { key: privateKeyFromProtobuf(bytes), created: false };
    } catch (err) {
      throw new Error(`identity file ${file} is not a libp2p private key: ${(err as Error).message}`);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const key = await generateKeyPair('Ed25519');
  // Write beside and rename: a crash mid-write must not leave a torn key that blocks every restart.
  const tmp = `${file}.${process.pid}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(privateKeyToProtobuf(key));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  return { key, created: true };
}
