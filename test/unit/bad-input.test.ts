/**
 * Bad input gets a clear error naming the field and value, and changes nothing:
 * resource validation as Kubernetes does it (labels, CIDRs), bounded error
 * lists and nesting, fields of the reference system that are not supported
 * yet, plain rule lists for `policy import`, interface names, the state dir.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MAX_PROBLEMS, ResourceValidationError, validateResources } from '../../src/store/kinds';
import { labelValueProblems, qualifiedNameProblems } from '../../src/util/k8snames';
import { PolicyValidationError, translatePolicy } from '../../src/policy/translate';
import { isRuleList, rulesToPolicy } from '../../src/policy/import';
import { readPolicyImport, readResources, UsageError } from '../../src/cli/main';
import { ifnameProblem } from '../../src/netlink/ifname';
import { ensurePrivateDir } from '../../src/util/fsutil';
import { parseAgentArgs } from '../../src/agent/config';
import { CniBackend, run } from '../../src/cni/plugin';

const pod = (labels: unknown) => ({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'x', labels } });
const problemsOf = (objects: unknown[], ctx = {}): ResourceValidationError => {
  try {
    validateResources(objects, ctx);
  } catch (e) {
    if (e instanceof ResourceValidationError) return e;
    throw e;
  }
  assert.fail('expected a validation error');
};
const policyProblems = (o: unknown): string => {
  try {
    translatePolicy(o as any);
  } catch (e) {
    if (e instanceof PolicyValidationError) return e.problems.join('\n');
    throw e;
  }
  assert.fail('expected a policy validation error');
};
const cnp = (spec: unknown) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec });
const knp = (spec: unknown) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'p', namespace: 'x' }, spec });

describe('labels as Kubernetes validates them', () => {
  it('qualified-name keys and label values', () => {
    for (const ok of ['app', 'app.kubernetes.io/name', 'a_b-c.d', 'example.com/A9', 'x'.repeat(63), `${'a'.repeat(253)}/n`]) assert.deepEqual(qualifiedNameProblems(ok), [], ok);
    for (const bad of ['a b', 'app!', '-app', 'app-', 'x'.repeat(64), '/n', 'Example.com/n', `${'a'.repeat(254)}/n`, 'a/b/c', '']) assert.notDeepEqual(qualifiedNameProblems(bad), [], bad);
    for (const ok of ['', 'v1', 'a.b_c-d', 'x'.repeat(63)]) assert.deepEqual(labelValueProblems(ok), [], ok);
    for (const bad of ['a b', 'v!', 'x'.repeat(64), '-v', 1, true, null]) assert.notDeepEqual(labelValueProblems(bad), [], String(bad));
  });

  it('apply rejects spaces, "!", non-strings, 64-character names and 1 MB values, naming the field and value', () => {
    const e = problemsOf([pod({ 'bad key': 'v', ok: 'bad value!', n: 12, ['x'.repeat(64)]: 'v', big: 'v'.repeat(1 << 20) })]);
    const all = e.problems.join('\n');
    assert.match(all, /Pod\/x\/p: metadata\.labels: key "bad key" is not a valid label key: name part must consist of alphanumeric/);
    assert.match(all, /metadata\.labels\.ok: value "bad value!" is not a valid label value/);
    assert.match(all, /metadata\.labels\.n: value 12 is not a valid label value: must be a string/);
    assert.match(all, /key "x{64}" is not a valid label key: name part must be no more than 63 characters/);
    assert.match(all, /metadata\.labels\.big: value "v+\.\.\.\(1048578 characters\) is not a valid label value: must be no more than 63 characters/);
    assert.ok(e.message.length < 4096, 'a 1 MB value is not echoed back');
  });

  it('policy selectors: keys and values are validated too, strings only', () => {
    const all = policyProblems(
      cnp({
        endpointSelector: { matchLabels: { 'k8s:bad key': 'x', app: 7 } },
        ingress: [{ fromEndpoints: [{ matchExpressions: [{ key: 'tier!', operator: 'In', values: ['a'] }, { key: 'ok', operator: 'In', values: ['has space'] }] }] }],
      }),
    );
    assert.match(all, /spec\.endpointSelector\.matchLabels: key "k8s:bad key" is not a valid label key/);
    assert.match(all, /spec\.endpointSelector\.matchLabels\.app: value 7 is not a valid label value: must be a string/);
    assert.match(all, /fromEndpoints\[0\]\.matchExpressions\[0\]\.key: key "tier!" is not a valid label key/);
    assert.match(all, /fromEndpoints\[0\]\.matchExpressions\[1\]\.values\[0\]: "has space" is not a valid label value/);
    // The reference system's sources and reserved identities stay accepted.
    translatePolicy(cnp({ endpointSelector: { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'y', 'any:app': 'a' } }, ingress: [{ fromEndpoints: [{ matchLabels: { 'reserved:host': '' } }] }] }) as any);
  });
});

describe('CIDRs as Kubernetes validates ipBlock', () => {
  it('no surrounding spaces; ipBlock needs a prefix length and a strict-subset except', () => {
    let all = policyProblems(knp({ podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: ' 10.0.0.0/8' } }, { ipBlock: { cidr: '10.0.0.1' } }, { ipBlock: { cidr: '10.0.0.0/8', except: ['10.0.0.0/8'] } }, { ipBlock: {} }] }] }));
    assert.match(all, /spec\.egress\[0\]\.to\[0\]\.ipBlock\.cidr: " 10\.0\.0\.0\/8" is not a valid CIDR: it contains whitespace/);
    assert.match(all, /to\[1\]\.ipBlock\.cidr: "10\.0\.0\.1" is not a valid CIDR \(expected address\/prefix-length/);
    assert.match(all, /to\[2\]\.ipBlock\.except\[0\]: "10\.0\.0\.0\/8" must be a strict subset of cidr 10\.0\.0\.0\/8/);
    assert.match(all, /to\[3\]\.ipBlock\.cidr: is required/);
    all = policyProblems(cnp({ endpointSelector: {}, egress: [{ toCIDR: ['10.0.0.0/8 '] }, { toCIDRSet: [{ cidr: '10.0.0.0/8', except: ['\t10.1.0.0/16'] }] }] }));
    assert.match(all, /toCIDR\[0\]: "10\.0\.0\.0\/8 " is not a valid CIDR: it contains whitespace/);
    assert.match(all, /toCIDRSet\[0\]\.except\[0\]: "\\t10\.1\.0\.0\/16" is not a valid CIDR/);
    // Host bits are accepted (as Kubernetes does) and cleared.
    const [r] = translatePolicy(knp({ podSelector: {}, egress: [{ to: [{ ipBlock: { cidr: '10.0.0.1/24' } }] }] }) as any);
    assert.equal(r.egress[0].peers.cidrs[0].cidr, '10.0.0.0/24');
  });
});

describe('bounded errors', () => {
  it('100,000 invalid objects: the first 100 problems and a count', () => {
    const objects = Array.from({ length: 100_000 }, (_, i) => pod({ [`bad key ${i}`]: 'v' }));
    const e = problemsOf(objects);
    assert.equal(e.problems.length, MAX_PROBLEMS);
    assert.equal(e.total, 100_000);
    assert.match(e.message, /\.\.\. and 99900 more problems \(100000 in all\)/);
    assert.ok(e.message.length < 64 * 1024, `message is ${e.message.length} bytes`);
  });

  it('a document nested thousands deep is a clear error, not a stack overflow', () => {
    let deep: any = 'x';
    for (let i = 0; i < 20_000; i++) deep = { a: deep };
    const e = problemsOf([{ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p' }, spec: deep }]);
    assert.match(e.problems[0], /^object 1: spec(\.a)+: nested more than 100 levels deep$/);
    // The CLI's YAML path too.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-deep-'));
    try {
      const f = path.join(dir, 'deep.yaml');
      fs.writeFileSync(f, `kind: Pod\nspec: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`);
      assert.throws(() => readResources(f), (x: unknown) => x instanceof UsageError && /nested (too deeply|more than 100 levels)/.test((x as Error).message));
      fs.writeFileSync(f, `kind: Pod\nspec: ${'['.repeat(150)}${']'.repeat(150)}\n`);
      assert.throws(() => readResources(f), /deep\.yaml: document 1: spec(\[0\])+: nested more than 100 levels deep/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Services', () => {
  it('a clusterIP outside --service-cidr is rejected at apply, naming the field', () => {
    const svc = (clusterIP: string) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name: 's', namespace: 'x' }, spec: { clusterIP, ports: [{ port: 80 }] } });
    const e = problemsOf([svc('10.97.0.10')], { serviceCidr: '10.96.0.0/16' });
    assert.deepEqual(e.problems, ['Service/x/s: spec.clusterIP: "10.97.0.10" is outside the service CIDR 10.96.0.0/16 (--service-cidr)']);
    assert.equal(validateResources([svc('10.96.0.10')], { serviceCidr: '10.96.0.0/16' }).length, 1);
  });
});

describe('the reference system\'s fields that Membrane does not support yet', () => {
  it('are rejected as "not supported", naming the field (never "unknown field")', () => {
    const all = policyProblems(
      cnp({
        endpointSelector: {},
        ingress: [{ fromEndpoints: [{}], auth: { type: 'spire' }, authentication: { mode: 'required' }, fromRequires: [{}] }],
        egress: [
          { toRequires: [{}], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }], serverNames: ['a.example'] }] },
          { toPorts: [{ ports: [{ port: '0', protocol: 'ICMPv6' }, { port: '0', protocol: 'VRRP' }, { port: '0', protocol: 'IGMP' }] }] },
        ],
      }),
    );
    for (const field of ['ingress[0].auth', 'ingress[0].authentication', 'ingress[0].fromRequires', 'egress[0].toRequires', 'egress[0].toPorts[0].serverNames', 'egress[1].toPorts[0].ports[0].protocol', 'egress[1].toPorts[0].ports[1].protocol', 'egress[1].toPorts[0].ports[2].protocol']) {
      assert.match(all, new RegExp(`spec\\.${field.replace(/[[\].]/g, '\\$&')}: .*not supported`), field);
    }
    assert.doesNotMatch(all, /unknown field/);
    const ccnp = policyProblems({ apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'h' }, spec: { nodeSelector: {}, ingress: [{}] } });
    assert.match(ccnp, /spec\.nodeSelector: host policies \(nodeSelector\) are not supported yet/);
  });

  it('ICMP in toPorts is supported: the port is the ICMP type', () => {
    const [r] = translatePolicy(cnp({ endpointSelector: {}, egress: [{ toPorts: [{ ports: [{ port: '8', protocol: 'ICMP' }] }] }] }) as any);
    assert.deepEqual(r.egress[0].ports, [{ port: 8, endPort: undefined, protocol: 'ICMP' }]);
    assert.match(policyProblems(cnp({ endpointSelector: {}, egress: [{ toPorts: [{ ports: [{ port: '300', protocol: 'ICMP' }] }] }] })), /port: 300 is not an ICMP type/);
  });
});

describe('policy import of plain rule lists', () => {
  const rules = [
    { labels: [{ key: 'name', value: 'L3 rule', source: 'unspec' }], endpointSelector: { matchLabels: { role: 'backend' } }, ingress: [{ fromEndpoints: [{ matchLabels: { role: 'frontend' } }] }] },
    { labels: ['unspec:name=L3 rule'], description: 'second', endpointSelector: { matchLabels: { role: 'db' } }, egress: [{ toEntities: ['world'] }] },
  ];

  it('become one CiliumClusterwideNetworkPolicy (not namespace-scoped, as the rules are), named after the rules\' name label, else the file', () => {
    assert.ok(isRuleList(rules));
    assert.ok(!isRuleList([{ apiVersion: 'v1', kind: 'Pod' }]));
    const p = rulesToPolicy(rules, { fileName: '/tmp/x/l3.json' });
    assert.equal(p.kind, 'CiliumClusterwideNetworkPolicy');
    assert.equal(p.metadata!.name, 'l3-rule');
    assert.deepEqual(p.specs, rules);
    assert.equal(rulesToPolicy([rules[0], { ...rules[1], labels: [] }], { fileName: '/tmp/x/My_Rules.json' }).metadata!.name, 'my-rules');
    assert.equal(rulesToPolicy(rules, { name: 'chosen', fileName: 'f.json' }).metadata!.name, 'chosen');
    const [r0, r1] = translatePolicy(p);
    assert.deepEqual(r0.subject.requirements.map((q) => q.key), ['role'], 'no implicit namespace');
    assert.equal(r1.egress[0].peers.entities[0], 'world');
    assert.deepEqual(validateResources([p]).length, 1);
  });

  it('the CLI: apply points to policy import; policy import converts each file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-import-'));
    try {
      const f = path.join(dir, 'rules.json');
      fs.writeFileSync(f, JSON.stringify(rules));
      assert.throws(() => readResources(f), (e: unknown) => e instanceof UsageError && /list of plain policy rules.*membrane policy import -f /.test((e as Error).message));
      const objs = readPolicyImport(f) as any[];
      assert.equal(objs.length, 1);
      assert.equal(objs[0].metadata.name, 'l3-rule');
      assert.equal(objs[0].metadata.annotations['membrane.io/imported-from'], 'rules.json');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** The CNI checks below run before any endpoint work: a backend call is a failure. */
const noBackend: CniBackend = {
  add: async () => assert.fail('add called'),
  del: async () => assert.fail('del called'),
  check: async () => assert.fail('check called'),
  status: async () => assert.fail('status called'),
  gc: async () => assert.fail('gc called'),
};

describe('interface names, the state directory', () => {
  it('CNI_IFNAME is checked as Linux checks it (dev_valid_name)', async () => {
    for (const ok of ['eth0', 'net1', 'a', 'x'.repeat(15), 'é'.repeat(7)]) assert.equal(ifnameProblem(ok), undefined, ok);
    for (const bad of ['', '.', '..', 'a b', 'a\tb', 'a:b', 'a/b', 'x'.repeat(16), 'é'.repeat(8), 'a\u00a0']) assert.ok(ifnameProblem(bad), JSON.stringify(bad));
    const out = await run({ env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_NETNS: '/run/netns/x', CNI_IFNAME: '..' }, stdin: '{"cniVersion":"1.1.0","name":"n","type":"membrane-cni","socket":"/nonexistent.sock"}' }, noBackend);
    const j = JSON.parse(out.stdout);
    assert.equal(j.code, 4);
    assert.match(j.msg, /CNI_IFNAME: "\.\." is not a valid interface name/);
  });

  it('an existing state directory with mode 0777 is tightened to 0700; system directories are refused', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mb-state-'));
    try {
      fs.chmodSync(dir, 0o777);
      assert.equal(ensurePrivateDir(dir), 0o777);
      assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
      assert.equal(ensurePrivateDir(dir), undefined);
      const sub = path.join(dir, 'new');
      ensurePrivateDir(sub);
      assert.equal(fs.statSync(sub).mode & 0o777, 0o700);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    assert.throws(() => parseAgentArgs(['--state-dir', '/tmp']), /state-dir: "\/tmp" is a system directory/);
    const c = parseAgentArgs(['--state-dir', '/tmp/x', '--bpf-root', '/sys/fs/bpf/x', '--cleanup']);
    assert.ok(c !== 'help' && c.cleanup === true);
  });
});
