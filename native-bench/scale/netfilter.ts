// A real network partition between two groups of loopback addresses: nftables drops every
// packet from one group to the other (both directions), in a table of our own. Dropped where
// packets arrive (the input hook), not where they leave: a drop on output fails the sender's
// UDP send at once (EPERM), which is a local firewall, not a partition; on input the sender
// hears nothing, as across a cut network. The partition is only cut inside
// a network namespace the harness created (run.ts re-executes itself under `unshare -n`), so a
// crash cannot leave rules behind on the machine: the namespace and its rules die with us.

import { execFile } from 'node:child_process';
import { access } from 'node:fs/promises';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const TABLE = 'peerpull_scale';

export async function nftAvailable(): Promise<boolean> {
  for (const p of ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft']) {
    try {
      await access(p);
      return true;
    } catch {
      // next
    }
  }
  return false;
}

/** Runs an nft script (`nft -f -`): rules in tables of the caller's. */
export async function nft(script: string): Promise<void> {
  const child = execFile('nft', ['-f', '-']);
  const done = new Promise<void>((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`nft failed (${code}): ${err.trim()}`))));
    child.once('error', (e) => reject(new Error(`nft (Debian nftables) could not be run: ${e.message}`)));
  });
  child.stdin!.end(script);
  await done;
}

export class Partition {
  private active = false;

  /** Drops all traffic between `a` and `b` (IPv4 addresses) until heal(). */
  async cut(a: string[], b: string[]): Promise<void> {
    // Sets keep the rule count at two however many nodes there are.
    await nft(`
table inet ${TABLE} {
  set side_a { type ipv4_addr; elements = { ${a.join(', ')} } }
  set side_b { type ipv4_addr; elements = { ${b.join(', ')} } }
  chain in {
    type filter hook input priority 0; policy accept;
    ip saddr @side_a ip daddr @side_b drop
    ip saddr @side_b ip daddr @side_a drop
  }
}
`);
    this.active = true;
  }

  async heal(): Promise<void> {
    if (!this.active) return;
    await exec('nft', ['delete', 'table', 'inet', TABLE]);
    this.active = false;
  }
}

/** Brings up loopback in a fresh network namespace (it starts down). */
export async function loopbackUp(): Promise<void> {
  await exec('ip', ['link', 'set', 'lo', 'up']);
}
