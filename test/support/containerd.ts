// A real containerd for tests: a plain background process with its own root, state and socket in a
// temp dir, driven with `ctr -a <socket>`. No systemd, nothing outside the temp dir. A missing
// containerd is a loud error: integration tests must never skip silently.

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile, access } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { generateImage, writeLayoutTar, type GeneratedImage, type ImageSpec } from '../../src/main/image-generator.js';
import { containerdConfigLines, DISABLED_PLUGINS, unmountUnder } from '../../src/main/storm/containerd.js';

const execFileP = promisify(execFile);

export const NAMESPACE = 'k8s.io';

export interface Containerd {
  /** The temp dir holding config, root, state and the socket. */
  dir: string;
  socket: string;
  root: string;
  /** The content store directory (`<root>/io.containerd.content.v1.content`). */
  contentPath: string;
  /** `overlayfs` when this sandbox can mount it, else `native`. */
  snapshotter: string;
  pid(): number | undefined;
  /** Runs `ctr -a <socket> <args>`; rejects with stderr in the message on failure. */
  ctr(args: string[]): Promise<{ stdout: string; stderr: string }>;
  /**
   * Kills containerd but keeps its files: `restart()` brings it back. SIGTERM (the default) is a
   * clean shutdown; SIGKILL is a crash.
   */
  kill(signal?: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Starts containerd again on the same root and socket. */
  restart(): Promise<void>;
  /** Kills containerd by PID and removes the temp dir. */
  stop(): Promise<void>;
}

// The config and the unmounting are the storm tool's (src/main/storm/containerd.ts), which starts
// a private containerd per node the same way. The CRI plugin is off unless asked for; it needs
// `io.containerd.runtime.v1.linux` (tasks-service), which stays on.

const live = new Map<number, ChildProcess>();
const dirs = new Set<string>();

// Last line of defence when a test crashes: no containerd and no temp dir may outlive the run.
process.on('exit', () => {
  for (const [pid] of live) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const d of dirs) {
    unmountUnder(d);
    rmSync(d, { recursive: true, force: true });
  }
});

let binaryChecked: Promise<void> | undefined;

/** Throws a loud error when containerd or ctr is not installed. */
export function requireContainerd(): Promise<void> {
  binaryChecked ??= (async () => {
    for (const bin of ['containerd', 'ctr']) {
      try {
        await execFileP(bin, ['--version']);
      } catch (err) {
        throw new Error(
          `${bin} is not installed or does not run (${(err as Error).message}). The containerd integration tests need it: ` +
            'install the Debian package `containerd` (apt-get install -y containerd). These tests never skip.',
        );
      }
    }
  })();
  return binaryChecked;
}

function configToml(dir: string, socket: string, snapshotter: string, opts: StartOptions): string {
  const q = (s: string) => JSON.stringify(s);
  const disabled = opts.cri ? DISABLED_PLUGINS : ['io.containerd.grpc.v1.cri', ...DISABLED_PLUGINS];
  const lines = containerdConfigLines(dir, socket, disabled);
  if (opts.cri) {
    // The daemon itself pulls (CRI ImageService) through hosts.toml files under config_path, the
    // way a kubelet-driven node does. No TCP stream server, no CNI config from /etc.
    lines.push(
      '[plugins."io.containerd.grpc.v1.cri"]',
      '  disable_tcp_service = true',
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      '  [plugins."io.containerd.grpc.v1.cri".containerd]',
      `    snapshotter = ${q(snapshotter)}`,
      '    discard_unpacked_layers = false',
      '  [plugins."io.containerd.grpc.v1.cri".cni]',
      `    bin_dir = ${q(path.join(dir, 'cni', 'bin'))}`,
      `    conf_dir = ${q(path.join(dir, 'cni', 'conf'))}`,
      '  [plugins."io.containerd.grpc.v1.cri".registry]',
      `    config_path = ${q(opts.cri.configPath)}`,
      '',
    );
  }
  return lines.join('\n');
}

async function exists(p: string): Promise<boolean> {
  return access(p).then(() => true, () => false);
}

export interface StartOptions {
  /** Prefix of the temp dir name. */
  name?: string;
  /**
   * Enables the CRI plugin, whose image service pulls through `<configPath>/<host>/hosts.toml`
   * (containerd's `config_path`), with `discard_unpacked_layers = false` as peerpull nodes need.
   * CRI answers "not initialized" for a moment after start: retry the first call.
   */
  cri?: { configPath: string };
}

/** Starts a containerd in a fresh temp dir and waits until its socket answers. */
export async function startContainerd(opts: StartOptions = {}): Promise<Containerd> {
  await requireContainerd();
  // Unix socket paths are limited to 108 bytes: keep the dir short, under /tmp.
  const dir = await mkdtemp(path.join(os.tmpdir(), `${opts.name ?? 'ppctd'}-`));
  dirs.add(dir);
  const socket = path.join(dir, 'containerd.sock');
  const root = path.join(dir, 'root');
  const configFile = path.join(dir, 'config.toml');
  const logFile = path.join(dir, 'containerd.log');
  let proc: ChildProcess | undefined;
  let snapshotter = 'native';

  const ctr = async (args: string[]) => {
    try {
      return await execFileP('ctr', ['-a', socket, ...args], {
        env: { ...process.env, CONTAINERD_SNAPSHOTTER: snapshotter },
        maxBuffer: 64 * 1024 * 1024,
      });
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`ctr ${args.join(' ')} failed: ${(e.stderr ?? '').trim() || e.message}`);
    }
  };

  const launch = async () => {
    // Sync open of the log file is fine here: test setup, not a serving path.
    const fd = openSync(logFile, 'a');
    const child = spawn('containerd', ['--config', configFile], { stdio: ['ignore', fd, fd], detached: false });
    closeSync(fd);
    const pid = child.pid;
    if (pid === undefined) throw new Error('containerd did not start (no pid)');
    live.set(pid, child);
    let exited: string | undefined;
    child.once('exit', (code, signal) => {
      exited = `exit code ${code} signal ${signal}`;
      live.delete(pid);
    });
    proc = child;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exited) throw new Error(`containerd exited during startup (${exited}); log:\n${await tail(logFile)}`);
      if (await exists(socket)) {
        try {
          await execFileP('ctr', ['-a', socket, 'version'], { timeout: 5000 });
          return;
        } catch {
          // socket exists but the gRPC server is not serving yet
        }
      }
      if (Date.now() > deadline) {
        await killProc(child);
        throw new Error(`containerd did not answer on ${socket} within 30s; log:\n${await tail(logFile)}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  try {
    snapshotter = 'overlayfs';
    await writeFile(configFile, configToml(dir, socket, snapshotter, opts));
    await launch();
    // overlayfs reports "ok" only when containerd's own test mount worked; nested container
    // sandboxes often refuse it, and then the native snapshotter (plain copies) is the fallback.
    const { stdout } = await ctr(['plugins', 'ls']);
    const overlay = stdout.split('\n').find((l) => /\bio\.containerd\.snapshotter\.v1\s+overlayfs\b/.test(l));
    snapshotter = overlay && /\bok\s*$/.test(overlay) ? 'overlayfs' : 'native';
    if (opts.cri && snapshotter !== 'overlayfs') {
      // CRI reads its snapshotter from the config: write the one that works and start again.
      await killProc(proc!);
      await writeFile(configFile, configToml(dir, socket, snapshotter, opts));
      await launch();
    }
  } catch (err) {
    if (proc) await killProc(proc);
    dirs.delete(dir);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const handle: Containerd = {
    dir,
    socket,
    root,
    contentPath: path.join(root, 'io.containerd.content.v1.content'),
    get snapshotter() {
      return snapshotter;
    },
    pid: () => proc?.pid,
    ctr,
    kill: async (signal = 'SIGTERM') => {
      if (proc) await killProc(proc, signal);
    },
    restart: async () => {
      if (proc) await killProc(proc);
      await launch();
    },
    stop: async () => {
      if (proc) await killProc(proc);
      proc = undefined;
      dirs.delete(dir);
      unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** Signals by PID (SIGKILL after 10 s if still there); resolves once the process is gone. */
async function killProc(child: ChildProcess, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) {
    if (pid !== undefined) live.delete(pid);
    return;
  }
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  process.kill(pid, signal);
  const timer = setTimeout(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }, 10_000);
  await gone;
  clearTimeout(timer);
  live.delete(pid);
}

async function tail(file: string): Promise<string> {
  try {
    const text = await readFile(file, 'utf8');
    return text.split('\n').slice(-40).join('\n');
  } catch {
    return '(no log)';
  }
}

export interface ImportOptions {
  /** Import every platform of an index (`--all-platforms`); otherwise only the host's. */
  allPlatforms?: boolean;
  namespace?: string;
}

/** Imports generated images with `ctr images import` (one tar for all of them). */
export async function importImages(ctd: Containerd, layout: string, images: GeneratedImage[], opts: ImportOptions = {}): Promise<void> {
  const tar = path.join(ctd.dir, `import-${process.hrtime.bigint()}.tar`);
  await writeLayoutTar(layout, images, tar);
  try {
    await ctd.ctr(['-n', opts.namespace ?? NAMESPACE, 'images', 'import', ...(opts.allPlatforms ? ['--all-platforms'] : []), tar]);
  } finally {
    await rm(tar, { force: true });
  }
}

/** Generates an image into `layout` and imports it. */
export async function makeImage(ctd: Containerd, layout: string, spec: ImageSpec, opts: ImportOptions = {}): Promise<GeneratedImage> {
  const img = await generateImage(layout, spec);
  await importImages(ctd, layout, [img], opts);
  return img;
}
