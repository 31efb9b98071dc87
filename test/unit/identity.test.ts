import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { IdentityAllocator, LOCAL_IDENTITY_SCOPE } from '../../src/identity/identity';
import { canonicalLabels, parseLabel, podSecurityLabels } from '../../src/identity/labels';

describe('identities', () => {
  it('has the reserved identities users know', () => {
    const a = new IdentityAllocator();
    const names = Object.fromEntries(a.list().map((i) => [i.id, i.labels[0]]));
    assert.equal(names[1], 'reserved:host');
    assert.equal(names[2], 'reserved:world');
    assert.equal(names[6], 'reserved:remote-node');
    assert.equal(names[10], 'reserved:world-ipv6');
  });

  it('gives one cluster identity per distinct label set from 256, independent of label order', () => {
    const a = new IdentityAllocator();
    const x = a.acquireSync(['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']);
    const y = a.acquireSync(['k8s:io.kubernetes.pod.namespace=default', 'k8s:app=web']);
    const z = a.acquireSync(['k8s:app=db', 'k8s:io.kubernetes.pod.namespace=default']);
    assert.equal(x.id, 256);
    assert.equal(y.id, 256);
    assert.equal(z.id, 257);
    a.release(256);
    assert.ok(a.get(256), 'still referenced once');
    a.release(256);
    assert.equal(a.get(256), undefined);
  });

  it('CIDR label sets get local identities with the scope bit', () => {
    const a = new IdentityAllocator();
    const c = a.acquireSync(['cidr:192.0.2.0/24', 'reserved:world']);
    assert.ok((c.id & LOCAL_IDENTITY_SCOPE) !== 0);
  });

  it('persists ids across restarts', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-id-'));
    try {
      const a = new IdentityAllocator(dir);
      const x = a.acquireSync(['k8s:app=a']);
      a.acquireSync(['k8s:app=b']);
      a.flush();
      const b = new IdentityAllocator(dir);
      assert.equal(b.acquireSync(['k8s:app=a']).id, x.id);
    } finally {
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('derives pod security labels as a cluster does', () => {
    assert.deepEqual(podSecurityLabels({ namespace: 'x', podLabels: { app: 'a' }, namespaceLabels: { team: 't' }, serviceAccount: 'sa' }), [
      'k8s:app=a',
      'k8s:io.cilium.k8s.namespace.labels.team=t',
      'k8s:io.cilium.k8s.policy.cluster=default',
      'k8s:io.cilium.k8s.policy.serviceaccount=sa',
      'k8s:io.kubernetes.pod.namespace=x',
    ]);
    assert.deepEqual(parseLabel('k8s:app=web'), { source: 'k8s', key: 'app', value: 'web' });
    assert.deepEqual(parseLabel('app=web'), { source: 'unspec', key: 'app', value: 'web' });
    assert.deepEqual(canonicalLabels(['b=1', 'a=2', 'b=1']), ['unspec:a=2', 'unspec:b=1']);
  });
});
