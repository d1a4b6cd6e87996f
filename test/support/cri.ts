// A minimal CRI ImageService client (runtime.v1) over containerd's unix socket: the calls a kubelet
// makes, so a test can make the containerd daemon itself pull through its hosts.toml `config_path`,
// the way a Kubernetes node does (unlike `ctr images pull`, which resolves hosts in the client).

import { access } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PROTO_FILE = 'cri-image.proto';

/** tsc does not copy .proto files: walk up from this module (test/support or dist/test/support) to test/support/proto. */
async function findProto(): Promise<string> {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  const tried: string[] = [];
  for (;;) {
    const candidate = path.join(dir, 'test', 'support', 'proto', PROTO_FILE);
    tried.push(candidate);
    if (await access(candidate).then(() => true, () => false)) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`${PROTO_FILE} not found (looked in ${tried.join(', ')})`);
    dir = parent;
  }
}

let serviceCtor: Promise<grpc.ServiceClientConstructor> | undefined;

function loadImageService(): Promise<grpc.ServiceClientConstructor> {
  serviceCtor ??= (async () => {
    const def = await protoLoader.load(await findProto(), { keepCase: true, longs: String, enums: String, defaults: true });
    return (grpc.loadPackageDefinition(def) as any).runtime.v1.ImageService as grpc.ServiceClientConstructor;
  })();
  return serviceCtor;
}

export interface CriImage {
  id: string;
  repo_tags: string[];
  repo_digests: string[];
  size: string;
}

export class CriImageClient {
  private constructor(private readonly client: grpc.Client, readonly socket: string) {}

  /**
   * Connects to `socket`. No keepalive pings: containerd answers them with GOAWAY.
   * Call `waitReady()` before the first real call: the CRI plugin initialises after the socket opens.
   */
  static async connect(socket: string): Promise<CriImageClient> {
    const Ctor = await loadImageService();
    return new CriImageClient(new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()), socket);
  }

  private call<Req, Res>(method: string, req: Req, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      (this.client as any)[method](req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: Res) => {
        if (err) reject(new Error(`CRI ${method} on ${this.socket}: ${err.code} ${err.details || err.message}`));
        else resolve(res);
      });
    });
  }

  /** The image as CRI sees it, or undefined when it is not there. */
  async imageStatus(image: string, timeoutMs = 10_000): Promise<CriImage | undefined> {
    const res = await this.call<object, { image: CriImage | null }>('ImageStatus', { image: { image } }, timeoutMs);
    return res.image ?? undefined;
  }

  /** Makes the daemon pull `image`; resolves with the image ref (the config digest). */
  async pullImage(image: string, timeoutMs = 60_000): Promise<string> {
    const res = await this.call<object, { image_ref: string }>('PullImage', { image: { image } }, timeoutMs);
    return res.image_ref;
  }

  /** Removes every reference CRI made for `image` (tag, repo digest, id), as kubelet's image GC does. */
  async removeImage(image: string, timeoutMs = 30_000): Promise<void> {
    await this.call('RemoveImage', { image: { image } }, timeoutMs);
  }

  /**
   * Waits until the CRI plugin answers. Right after containerd starts it refuses image calls
   * ("server is not initialized yet"); a status query for any name answers once it is ready.
   */
  async waitReady(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.imageStatus('docker.io/library/cri-readiness-probe:none', 2000);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`CRI image service on ${this.socket} not ready after ${timeoutMs} ms: ${(err as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  close(): void {
    this.client.close();
  }
}
