import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { maglevTable } from '../../src/service/maglev';
import { ServiceManager, lbEntries } from '../../src/service/manager';
import { validateResources } from '../../src/store/kinds';

/** The population of Maglev (NSDI'16, Pseudocode 1), written independently from src/service/maglev.ts. */
function referenceMaglev(names: string[], M: number): number[] {
  const hash = (seed: string, n: string) => crypto.createHash('sha256').update(`${seed}\0${n}`).digest().readBigUInt64BE(0);
  const permutation = names.map((n) => {
    const offset = Number(hash('offset', n) % BigInt(M));
    const skip = Number((hash('skip', n) % BigInt(M - 1)) + 1n);
    return (j: number) => (offset + j * skip) % M;
  });
  const next = names.map(() => 0);
  const entry = new Array(M).fill(-1);
  let n = 0;
  while (true) {
    for (let i = 0; i < names.length; i++) {
      let c = permutation[i](next[i]);
      while (entry[c] >= 0) {
        next[i] += 1;
        c = permutation[i](next[i]);
      }
      entry[c] = i;
      next[i] += 1;
      n += 1;
      if (n === M) return entry;
    }
  }
}

const backends = (n: number) => Array.from({ length: n }, (_, i) => `10.0.${i >> 8}.${i & 255}:8080`);

describe('Maglev', () => {
  it('matches the published algorithm', () => {
    for (const [n, m] of [[1, 7], [3, 13], [10, 1021], [37, 251]]) {
      assert.deepEqual(maglevTable(backends(n), m), referenceMaglev(backends(n), m), `${n} backends, M=${m}`);
    }
  });

  it('is balanced and moves about 1/N of the slots when one of N backends changes', () => {
    const M = 1021;
    const before = maglevTable(backends(10), M).map((i) => backends(10)[i]);
    const counts = new Map<string, number>();
    for (const b of before) counts.set(b, (counts.get(b) ?? 0) + 1);
    for (const c of counts.values()) assert.ok(c >= 80 && c <= 125, `balanced: ${c} slots of ${M}`);
    // One of ten backends leaves: its ~1/10 of the slots move, and little else.
    const nine = backends(10).slice(0, 9);
    const afterRemoval = maglevTable(nine, M).map((i) => nine[i]);
    const moved = before.filter((b, i) => b !== afterRemoval[i]).length;
    assert.ok(moved / M <= 0.1 + 0.05, `removal: ${moved} of ${M} slots moved`);
    // One is replaced by another: a removal plus an addition, about 2/10.
    const replaced = [...nine, '10.9.9.9:8080'];
    const afterReplace = maglevTable(replaced, M).map((i) => replaced[i]);
    const moved2 = before.filter((b, i) => b !== afterReplace[i]).length;
    assert.ok(moved2 / M <= 0.2 + 0.05, `replacement: ${moved2} of ${M} slots moved`);
  });
});

describe('service manager', () => {
  const svc = (name: string, spec: any, annotations?: Record<string, string>) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'shop', annotations }, spec });
  const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'mb-svc-'));

  it('validates Services and EndpointSlices naming the field', () => {
    assert.throws(
      () => validateResources([svc('bad', { type: 'LoadBalancer', ports: [{ port: 70000, targetPort: 'Not_A_Name' }, { port: 80 }] })]),
      (e: any) => /spec\.type: "LoadBalancer"/.test(e.message) && /spec\.ports\[0\]\.port: 70000/.test(e.message) && /spec\.ports\[0\]\.targetPort/.test(e.message) && /spec\.ports\[1\]\.name: is required/.test(e.message),
    );
    assert.throws(() => validateResources([{ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 's', namespace: 'shop' }, addressType: 'IPv4' }]), /kubernetes\.io\/service-name/);
  });

  it('allocates ClusterIPs and node ports, derives backends from the selector and named target ports, keeps ids stable', () => {
    const dir = tmp();
    try {
      const m = new ServiceManager('10.96.0.0/16', dir);
      const pods: import('../../src/service/manager').LocalPod[] = [
        { ip: '10.200.0.5', namespace: 'shop', podName: 'web-1', podLabels: { app: 'web' }, namedPorts: { http: [{ port: 8080, protocol: 'TCP' }] } },
        { ip: '10.200.0.6', namespace: 'shop', podName: 'web-2', podLabels: { app: 'web' }, namedPorts: { http: [{ port: 8081, protocol: 'TCP' }] } },
        { ip: '10.200.0.7', namespace: 'other', podName: 'web-3', podLabels: { app: 'web' }, namedPorts: {} },
      ];
      const services = [svc('web', { type: 'NodePort', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 'http' }] })] as any;
      const r = m.compute(services, [], pods, ['192.0.2.1']);
      assert.deepEqual(r.errors, []);
      const cip = r.frontends.find((f) => f.type === 'ClusterIP')!;
      assert.equal(cip.ip, '10.96.0.1');
      assert.deepEqual(cip.backends.map((b) => `${b.ip}:${b.port}`).sort(), ['10.200.0.5:8080', '10.200.0.6:8081']);
      const np = r.frontends.find((f) => f.type === 'NodePort')!;
      assert.equal(np.ip, '192.0.2.1');
      assert.ok(np.port >= 30000 && np.port <= 32767);
      const again = new ServiceManager('10.96.0.0/16', dir).compute(services, [], pods, ['192.0.2.1']);
      assert.deepEqual(again.frontends.map((f) => [f.ip, f.port, f.revNat, f.backends.map((b) => b.id)]), r.frontends.map((f) => [f.ip, f.port, f.revNat, f.backends.map((b) => b.id)]));
      const e = lbEntries(r.frontends);
      const master = e.services.find((x) => x.key.slot === 0 && x.key.dport === 80)!;
      assert.equal(master.value.count, 2);
      assert.equal(e.revnat.length, 2);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('EndpointSlice conditions: terminating backends stay for existing flows but get no slots; Maglev fills M slots; affinity', () => {
    const dir = tmp();
    try {
      const m = new ServiceManager('10.96.0.0/16', dir);
      const slice = {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: 'echo-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'echo' } },
        addressType: 'IPv4',
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
        endpoints: [
          { addresses: ['10.200.0.5'], conditions: { ready: true } },
          { addresses: ['10.200.0.6'], conditions: { ready: false, serving: true, terminating: true } },
          { addresses: ['10.200.0.7'], conditions: { ready: false, serving: false } },
        ],
      };
      const services = [svc('echo', { clusterIP: '10.96.7.7', sessionAffinity: 'ClientIP', ports: [{ name: 'http', port: 80 }] }, { 'membrane.io/lb-algorithm': 'maglev' })] as any;
      const r = m.compute(services, [slice as any], [], []);
      const f = r.frontends[0];
      assert.equal(f.ip, '10.96.7.7');
      assert.deepEqual(f.backends.map((b) => [b.ip, b.terminating]), [['10.200.0.5', false], ['10.200.0.6', true]]);
      assert.equal(f.slots.length, 1021);
      assert.ok(f.slots.every((id) => id === f.backends[0].id), 'only the ready backend fills the table');
      assert.equal(f.affinityTimeout, 10800);
      const e = lbEntries(r.frontends);
      assert.equal(e.backends.find((b) => b.value.port === 8080 && b.value.flags === 1)?.value.addr[3], 6);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });
});
