/**
 * A minimal CRI runtime.v1 client (@grpc/grpc-js + @grpc/proto-loader) over the
 * proto subset in test/fixtures/clients/cri-runtime-v1.proto. Every call has a
 * deadline.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as path from 'node:path';
import { REPO } from '../../helpers/sys';

export const CRI_PROTO = path.join(REPO, 'test/fixtures/clients/cri-runtime-v1.proto');

export interface PodSandboxMetadata {
  name: string;
  uid: string;
  namespace: string;
  attempt?: number;
}

export class CriClient {
  private readonly client: grpc.Client & Record<string, any>;

  constructor(socketPath: string) {
    const def = protoLoader.loadSync(CRI_PROTO, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    const Service = pkg.runtime.v1.RuntimeService as grpc.ServiceClientConstructor;
    this.client = new Service(`unix://${socketPath}`, grpc.credentials.createInsecure()) as any;
  }

  call<T = any>(method: string, req: object, timeoutMs = 30_000): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method](req, { deadline: new Date(Date.now() + timeoutMs) }, (err: grpc.ServiceError | null, res: T) => {
        if (err) reject(new Error(`CRI ${method}: ${err.details || err.message} (code ${err.code})`));
        else resolve(res);
      });
    });
  }

  version() {
    return this.call<{ version: string; runtimeName: string; runtimeVersion: string; runtimeApiVersion: string }>('Version', { version: 'v1' }, 10_000);
  }

  async runPodSandbox(metadata: PodSandboxMetadata, opts: { logDirectory: string; cgroupParent?: string; labels?: Record<string, string> }): Promise<string> {
    const r = await this.call<{ podSandboxId: string }>('RunPodSandbox', {
      config: {
        metadata: { attempt: 0, ...metadata },
        hostname: metadata.name,
        logDirectory: opts.logDirectory,
        labels: opts.labels ?? {},
        linux: { cgroupParent: opts.cgroupParent ?? '', securityContext: { namespaceOptions: { network: 'POD', pid: 'CONTAINER', ipc: 'POD' } } },
      },
      runtimeHandler: '',
    }, 60_000);
    return r.podSandboxId;
  }

  podSandboxStatus(id: string, verbose = false) {
    return this.call<{ status: any; info: Record<string, string> }>('PodSandboxStatus', { podSandboxId: id, verbose }, 15_000);
  }

  listPodSandbox(): Promise<any[]> {
    return this.call<{ items: any[] }>('ListPodSandbox', {}, 15_000).then((r) => r.items ?? []);
  }

  stopPodSandbox(id: string) {
    return this.call('StopPodSandbox', { podSandboxId: id }, 60_000);
  }

  removePodSandbox(id: string) {
    return this.call('RemovePodSandbox', { podSandboxId: id }, 60_000);
  }

  close(): void {
    this.client.close();
  }
}
