import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import { FilterError, matchFlow, parseFlowQuery } from '../../src/monitor/filter';
import type { FlowSource, SourceEndpoint } from '../../src/monitor/context';
import { Monitor } from '../../src/monitor/monitor';
import { L7Record, L7RecordError } from '../../src/monitor/l7';
import { StoreStream, lostEventsLine, serveFlows } from '../../src/monitor/stream';
import { SLOT_BYTES } from '../../src/monitor/store';
import { AgentMetrics } from '../../src/monitor/metrics';
import { decodePacket } from '../../src/monitor/packet';
import { flowCompact, lostLine, monitorLine } from '../../src/cli/flowfmt';
import { makeLogger, setLogSink } from '../../src/util/log';
import { dropRecord, packBatch, tcpFrame, traceRecord, udpFrame, verdictRecord } from '../helpers/events';

const log = makeLogger({ test: 'flows' });

function source(eps: SourceEndpoint[], nodeName = 'n1'): FlowSource & { eps: SourceEndpoint[] } {
  const s = {
    eps,
    nodeName,
    endpoints: () => s.eps,
    identityLabels: (id: number) => (id === 2 ? ['reserved:world'] : id >= 256 ? [`k8s:app=id${id}`, 'k8s:io.kubernetes.pod.namespace=shop'] : undefined),
    linkNames: () => new Map([[9, 'lxc0']]),
  };
  return s;
}

const WEB: SourceEndpoint = { id: 7, identity: 300, namespace: 'shop', podName: 'web-1', labels: ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=shop'], ipv4: '10.0.0.2' };

function monitor(eps: SourceEndpoint[] = [WEB], opts: { count?: number; memory?: number } = {}) {
  const src = source(eps);
  const m = new Monitor(undefined, undefined, undefined, src, log, { bufferSize: opts.count ?? 65536, memoryBytes: opts.memory ?? 64 * 2 ** 20, aggregation: 'medium', reportInterval: 5, observe: true });
  return { m, src };
}

const all = (m: Monitor) => {
  const out = [];
  for (let s = m.store.oldest; s < m.store.head; s++) out.push(m.flowAt(s)!);
  return out;
};

const httpRecord = (o: Partial<L7Record> = {}): L7Record => ({
  time: Date.UTC(2026, 10, 22, 7, 0, 1),
  kind: 'request',
  direction: 'ingress',
  verdict: 'forwarded',
  src: { ip: '10.0.0.9', port: 41000, identity: 301 },
  dst: { ip: '10.0.0.2', port: 8080, identity: 300, endpointId: 7 },
  http: { method: 'GET', url: 'http://web/public/index.html?x=1', protocol: 'HTTP/1.1', host: 'web' },
  ...o,
});

describe('flows', () => {
  it('decodes captured packets', () => {
    const p = decodePacket(tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080));
    assert.equal(p.ip?.source, '192.0.2.10');
    assert.equal(p.tcp?.destination_port, 8080);
    assert.deepEqual(p.tcp?.flags, { SYN: true });
    assert.deepEqual(decodePacket(Buffer.alloc(5)), {});
  });

  it('turns a drop record into a DROPPED flow enriched when read, and formats it', () => {
    const { m } = monitor();
    const frame = tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080);
    m.ingestBatch(packBatch([dropRecord({ reason: 133, source: 7, srcLabel: 2, dstLabel: 300, dstId: 7, frame })]), 1);
    assert.equal(m.stored, 1);
    const f = m.flowAt(0)!;
    f.time = new Date(Date.UTC(2026, 10, 22, 7, 0, 0)).toISOString();
    assert.equal(f.verdict, 'DROPPED');
    assert.equal(f.drop_reason, 133);
    assert.equal(f.destination.pod_name, 'web-1');
    assert.equal(f.destination.ID, 7);
    assert.equal(f.source.identity, 2);
    assert.deepEqual(f.source.labels, ['reserved:world']);
    assert.equal(f.interface?.name, 'lxc0');
    assert.match(f.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-000000000000$/);
    assert.equal(m.flowAt(0)!.uuid, f.uuid, 'a flow keeps its id across reads');
    assert.equal(flowCompact(f), 'Nov 22 07:00:00.000: 192.0.2.10:40000 (world) -> shop/web-1:8080 (ID:300) Policy denied DROPPED (TCP Flags: SYN)');
    const ev = m.eventAt(0)! as any;
    const line = monitorLine({ event: { ...ev, data: ev.data.toString('hex') }, flow: f });
    assert.equal(line, 'xx drop (Policy denied) flow 0xabc to endpoint 7, ifindex 9, file 1 line 1, , identity world->300: 192.0.2.10:40000 -> 10.0.0.2:8080 tcp SYN');
  });

  it('keeps naming an endpoint after it is gone, and names the new identity of a relabelled one only in new flows', () => {
    const { m, src } = monitor();
    const frame = tcpFrame('10.0.0.2', '192.0.2.10', 40000, 443);
    const rec = traceRecord({ point: 5, source: 7, srcLabel: 300, dstLabel: 2, dstId: 0, frame }); // FROM_ENDPOINT
    m.ingestBatch(packBatch([rec]), 1);
    src.eps = [{ ...WEB, identity: 301, labels: ['k8s:app=web2'] }];
    m.contexts.refresh(Date.now(), true);
    m.ingestBatch(packBatch([traceRecord({ point: 5, source: 7, srcLabel: 301, dstLabel: 2, dstId: 0, frame })]), 1);
    src.eps = [];
    m.contexts.refresh(Date.now(), true);
    const [a, b] = all(m);
    assert.equal(a.source.pod_name, 'web-1');
    assert.deepEqual(a.source.labels, WEB.labels);
    assert.equal(a.source.identity, 300);
    assert.equal(a.traffic_direction, 'EGRESS');
    assert.deepEqual(b.source.labels, ['k8s:app=web2']);
    assert.equal(b.source.identity, 301);
  });

  it('policy verdicts name the local endpoint and the remote peer on either direction', () => {
    const { m } = monitor();
    const ing = verdictRecord({ source: 7, remoteLabel: 2, allowed: false, egress: false, dport: 8080, proto: 6, frame: tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080) });
    const eg = verdictRecord({ source: 7, remoteLabel: 2, allowed: true, egress: true, dport: 53, proto: 17, frame: udpFrame('10.0.0.2', '192.0.2.53', 5000, 53) });
    m.ingestBatch(packBatch([ing, eg]), 2);
    const [a, b] = all(m);
    assert.equal(a.verdict, 'DROPPED');
    assert.equal(a.destination.pod_name, 'web-1');
    assert.equal(a.source.identity, 2);
    assert.equal(b.verdict, 'FORWARDED');
    assert.equal(b.source.pod_name, 'web-1');
    assert.equal(b.destination.identity, 2);
    assert.equal(m.counters.verdicts.allowed, 1);
    assert.equal(m.counters.verdicts.denied, 1);
  });

  it('counts records it cannot decode and stores nothing for them', () => {
    const { m } = monitor();
    m.ingestBatch(packBatch([Buffer.from([99, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(4)]), 2);
    assert.equal(m.counters.undecodable, 2);
    assert.equal(m.stored, 0);
  });

  it('filters: OR within a filter, AND across, not, endpoint sides, validation naming the culprit', () => {
    const { m } = monitor();
    m.ingestBatch(packBatch([dropRecord({ reason: 181, source: 7, srcLabel: 2, dstLabel: 300, dstId: 7, frame: tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080) })]), 1);
    const f = m.flowAt(0)!;
    const q = (s: string) => matchFlow(f, parseFlowQuery(new URLSearchParams(s)).filters);
    assert.ok(q('to_pod=shop/web'));
    assert.ok(!q('from_pod=shop/web'));
    assert.ok(q('pod=web-1'));
    assert.ok(q('verdict=FORWARDED&verdict=DROPPED'));
    assert.ok(!q('verdict=DROPPED&protocol=udp'));
    assert.ok(q('not.verdict=FORWARDED'));
    assert.ok(q('drop_reason=181'));
    assert.ok(q('ip=192.0.2.0/24'));
    assert.ok(q('to_port=8080&tcp_flags=SYN'));
    assert.ok(!q('tcp_flags=SYN,ACK'));
    assert.ok(q('label=app=web&traffic_direction=ingress&type=drop'));
    assert.ok(!q('type=l7'));
    assert.ok(!q('http_status=200-599'));
    assert.throws(() => parseFlowQuery(new URLSearchParams('colour=red')), FilterError);
    assert.throws(() => parseFlowQuery(new URLSearchParams('port=http')), /port: "http" is not a number/);
    assert.throws(() => parseFlowQuery(new URLSearchParams('since=yesterday')), /since: "yesterday"/);
    assert.throws(() => parseFlowQuery(new URLSearchParams('http_status=4xx')), /http_status: "4xx" is not a status code/);
    assert.throws(() => parseFlowQuery(new URLSearchParams('http_path=(')), /http_path: "\(" is not a regular expression/);
    assert.throws(() => parseFlowQuery(new URLSearchParams('dns_query=a b')), /dns_query: "a b"/);
  });

  it('stores a flow in a few hundred bytes: 65,536 flows from 300 pods, 1 in 16 an L7 record, fit well inside 64 MiB', () => {
    // The heap and array buffers before and after, with the garbage collector run: everything the store keeps.
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const used = () => {
      gc();
      gc();
      const u = process.memoryUsage();
      return u.heapUsed + u.arrayBuffers;
    };
    const eps: SourceEndpoint[] = [];
    for (let i = 0; i < 300; i++) {
      eps.push({ id: i + 1, identity: 256 + (i % 60), namespace: `ns${i % 7}`, podName: `pod-${i}-7d9c8b5f4-x2x9k`, ipv4: `10.1.${i >> 8}.${i & 255}`, labels: [`k8s:app=app${i % 60}`, `k8s:io.kubernetes.pod.namespace=ns${i % 7}`, 'k8s:io.cilium.k8s.policy.serviceaccount=default', `k8s:pod-template-hash=7d9c8b5f4`, 'k8s:tier=backend'] });
    }
    const recs: Buffer[] = [];
    for (let i = 0; i < 4096; i++) {
      const a = eps[i % 300];
      const b = eps[(i * 7 + 3) % 300];
      const frame = tcpFrame(a.ipv4!, b.ipv4!, 30000 + (i % 20000), 8080, i % 3 ? 0x10 : 0x02);
      recs.push(
        i % 3 === 0
          ? dropRecord({ reason: 133, source: b.id, srcLabel: a.identity, dstLabel: b.identity, dstId: b.id, frame })
          : traceRecord({ point: i % 2 ? 5 : 0, source: a.id, srcLabel: a.identity, dstLabel: b.identity, dstId: i % 2 ? 0 : b.id, frame }),
      );
    }
    const batch = packBatch(recs);
    const before = used();
    const { m } = monitor(eps);
    const N = 65536;
    let batches = 0;
    for (let done = 0; done < N; ) {
      {
        // 240 datapath records (out of the 4096 prepared), then 16 L7 records
        const n = Math.min(240, N - done);
        const start = (batches++ % 16) * 240;
        m.ingestBatch(packBatch(recs.slice(start, start + n)), n);
        done += n;
      }
      for (let k = 0; k < 16 && done < N; k++, done++) {
        const a = eps[done % 300];
        const b = eps[(done * 11) % 300];
        m.ingestL7(
          httpRecord({
            kind: done % 2 ? 'response' : 'request',
            src: { ip: a.ipv4!, port: 40000 + (done % 1000), identity: a.identity },
            dst: { ip: b.ipv4!, port: 8080, identity: b.identity, endpointId: b.id },
            http: { method: 'GET', url: `http://svc-${done % 50}.ns.svc.cluster.local/api/v1/items/${done}?page=2`, protocol: 'HTTP/1.1', code: done % 2 ? 200 : undefined, headers: { 'user-agent': 'curl/7.88.1', accept: '*/*' } },
          }),
        );
      }
    }
    assert.equal(m.stored, N);
    const after = used();
    const perFlow = (after - before) / N;
    const acc = m.memory();
    console.log(`bytes per stored flow: ${perFlow.toFixed(0)} measured (heap + array buffers), ${(acc.bytes / N).toFixed(0)} by the store's accounting (${SLOT_BYTES} per slot); ${N} flows: ${(acc.bytes / 2 ** 20).toFixed(1)} MiB; ${acc.contexts} contexts`);
    assert.ok(perFlow <= 1024, `measured ${perFlow.toFixed(0)} bytes per flow (target <= 1 KiB)`);
    assert.ok(acc.bytes / N <= 1024, `accounted ${acc.bytes / N} bytes per flow`);
    assert.ok(acc.bytes <= 64 * 2 ** 20);
    // Flows are still built right after all that.
    const f = m.flowAt(m.store.head - 1)!;
    assert.equal(f.event_type.type, 129);
    batch.fill(0);
  });

  it('keeps within the memory bound: fewer flows, oldest evicted first, the variable part counted', () => {
    const { m } = monitor([WEB], { count: 1_000_000, memory: 1 << 20 });
    const cap = m.store.capacity;
    assert.equal(cap, Math.floor(((1 << 20) * 7) / 8 / SLOT_BYTES));
    const rec = dropRecord({ reason: 133, source: 7, srcLabel: 2, dstLabel: 300, dstId: 7, frame: tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080) });
    const batch = packBatch(Array(1000).fill(rec));
    for (let i = 0; i < 12; i++) m.ingestBatch(batch, 1000);
    assert.equal(m.stored, cap);
    assert.equal(m.store.oldest, 12000 - cap);
    assert.ok(m.memory().bytes <= 1 << 20, `${m.memory().bytes} bytes`);
    // L7 records with long URLs and headers: the variable part stays within its share.
    const big = (i: number) => httpRecord({ http: { method: 'POST', url: `http://web/${'x'.repeat(3000)}${i}`, protocol: 'HTTP/1.1', headers: Object.fromEntries(Array.from({ length: 40 }, (_, k) => [`h${k}`, 'v'.repeat(300)])) } });
    for (let i = 0; i < 2000; i++) m.ingestL7(big(i));
    assert.ok(m.memory().bytes <= 1 << 20, `${m.memory().bytes} bytes with L7 records`);
    assert.ok(m.counters.evictedForMemory > 0);
    const last = m.flowAt(m.store.head - 1)!;
    assert.equal(last.l7!.http!.url.length, 2048, 'long URLs are cut');
    assert.equal(last.l7!.http!.headers!.length, 32, 'at most 32 headers');
    // A count bound alone.
    const small = monitor([WEB], { count: 10 }).m;
    small.ingestBatch(batch, 1000);
    assert.equal(small.stored, 10);
  });

  it('L7 records: checked, stored as l7 flows with both pods, filtered, shown and counted', async () => {
    const { m } = monitor([WEB, { id: 8, identity: 301, namespace: 'shop', podName: 'client', labels: ['k8s:app=client'], ipv4: '10.0.0.9' }]);
    assert.throws(() => m.ingestL7({ ...httpRecord(), verdict: 'maybe' }), (e: unknown) => e instanceof L7RecordError && /verdict: "maybe" must be one of forwarded, denied, error/.test(e.message));
    assert.throws(() => m.ingestL7({ ...httpRecord(), src: { ip: '10.0.0.300', port: 1, identity: 1 } }), /src\.ip: "10\.0\.0\.300" is not an IPv4 or IPv6 address/);
    assert.throws(() => m.ingestL7({ ...httpRecord(), colour: 'red' }), /colour: "red" is not a field/);
    assert.throws(() => m.ingestL7({ ...httpRecord(), http: undefined }), /neither http nor dns/);
    assert.throws(() => m.ingestL7({ ...httpRecord(), http: { method: 'GET', url: '/', protocol: 'HTTP/1.1', code: 42 } }), /http\.code: 42 must be an integer in 100\.\.999/);
    assert.equal(m.counters.l7Invalid, 5);
    assert.equal(m.stored, 0, 'nothing stored for a bad record');

    m.ingestL7(httpRecord());
    m.ingestL7(httpRecord({ kind: 'response', verdict: 'forwarded', src: { ip: '10.0.0.2', port: 8080, identity: 300, endpointId: 7 }, dst: { ip: '10.0.0.9', port: 41000, identity: 301 }, http: { method: 'GET', url: 'http://web/public/index.html?x=1', protocol: 'HTTP/1.1', code: 200, latencyNs: 3_400_000 } }));
    m.ingestL7(httpRecord({ verdict: 'denied', policy: 'CiliumNetworkPolicy/shop/web-l7', http: { method: 'POST', url: '/admin/users', protocol: 'HTTP/1.1' } }));
    m.ingestL7(httpRecord({ kind: 'response', verdict: 'denied', policy: 'CiliumNetworkPolicy/shop/web-l7', http: { method: 'POST', url: '/admin/users', protocol: 'HTTP/1.1', code: 403 } }));
    m.ingestL7(httpRecord({ direction: 'egress', http: undefined, dst: { ip: '10.0.0.53', port: 53, identity: 2 }, dns: { query: 'api.example.com.', qtypes: ['A'] } }));
    m.ingestL7(httpRecord({ kind: 'response', direction: 'egress', http: undefined, src: { ip: '10.0.0.53', port: 53, identity: 2 }, dns: { query: 'api.example.com.', qtypes: ['A'], rcode: 'NoError', ips: ['192.0.2.7'], ttls: [30] } }));
    m.ingestL7(httpRecord({ kind: 'response', direction: 'egress', verdict: 'denied', http: undefined, src: { ip: '10.0.0.53', port: 53, identity: 2 }, dns: { query: 'evil.example.org', qtypes: ['AAAA'], rcode: 'Refused' } }));
    assert.equal(m.stored, 7);
    const flows = all(m);
    const [req, resp, denied, denied403, dnsq, dnsr] = flows;
    assert.equal(req.event_type.type, 129);
    assert.equal(req.verdict, 'FORWARDED');
    assert.equal(req.source.pod_name, 'client', 'the client pod, found by address');
    assert.equal(req.destination.pod_name, 'web-1');
    assert.deepEqual(req.l7, { type: 'REQUEST', http: { code: undefined, method: 'GET', url: 'http://web/public/index.html?x=1', protocol: 'HTTP/1.1', host: 'web' } });
    assert.equal(req.l4?.TCP?.destination_port, 8080);
    assert.equal(resp.l7!.type, 'RESPONSE');
    assert.equal(resp.l7!.latency_ns, 3_400_000);
    assert.equal(resp.is_reply, true);
    assert.equal(denied.verdict, 'DROPPED');
    assert.deepEqual(denied.ingress_denied_by, [{ kind: 'CiliumNetworkPolicy', namespace: 'shop', name: 'web-l7' }]);
    assert.equal(dnsq.l4?.UDP?.destination_port, 53);
    assert.equal(dnsr.l7!.dns!.ips![0], '192.0.2.7');

    const sel = (s: string) => flows.filter((f) => matchFlow(f, parseFlowQuery(new URLSearchParams(s)).filters)).map((f) => flows.indexOf(f));
    assert.deepEqual(sel('type=l7'), [0, 1, 2, 3, 4, 5, 6]);
    assert.deepEqual(sel('http_method=post'), [2, 3]);
    assert.deepEqual(sel('http_path=^/admin'), [2, 3]);
    assert.deepEqual(sel('http_path=index\\.html$'), [0, 1]);
    assert.deepEqual(sel('http_status=403'), [3]);
    assert.deepEqual(sel('http_status=400-499'), [3]);
    assert.deepEqual(sel('http_status=2%2B'), [1]);
    assert.deepEqual(sel('dns_query=api.example.com'), [4, 5]);
    assert.deepEqual(sel('dns_query=*.example.org'), [6]);
    assert.deepEqual(sel('protocol=dns&verdict=DROPPED'), [6]);
    assert.deepEqual(sel('type=l7&verdict=DROPPED&to_pod=shop/web'), [2, 3, 6]);

    // Text forms: observe compact lines and monitor lines.
    const t = (f: (typeof flows)[number]) => flowCompact({ ...f, time: new Date(Date.UTC(2026, 10, 22, 7, 0, 1)).toISOString() });
    assert.equal(t(req), 'Nov 22 07:00:01.000: shop/client:41000 (ID:301) -> shop/web-1:8080 (ID:300) http-request FORWARDED (HTTP/1.1 GET http://web/public/index.html?x=1)');
    assert.equal(t(resp), 'Nov 22 07:00:01.000: shop/web-1:8080 (ID:300) <- shop/client:41000 (ID:301) http-response FORWARDED (HTTP/1.1 200 3ms (GET http://web/public/index.html?x=1))');
    assert.equal(t(denied403).endsWith('http-response DROPPED (HTTP/1.1 403 (POST /admin/users))'), true, t(denied403));
    assert.match(t(dnsr), /dns-response FORWARDED \(DNS Answer "192\.0\.2\.7" TTL: 30 \(Proxy api\.example\.com\. A\)\)$/);
    const ev = m.eventAt(m.store.oldest + 2)!;
    assert.equal(monitorLine({ event: ev, flow: denied }), '<- Request http from 8 ([k8s:app=client]) to 7 ([k8s:app=web k8s:io.kubernetes.pod.namespace=shop]), identity 301->300, verdict Denied POST /admin/users => 0');

    // Prometheus counters.
    const fakeMap = { entriesPerCpu: () => [] } as any;
    const metrics = new AgentMetrics({ datapath: fakeMap, endpointsByState: () => ({}), identities: () => ({ reserved: 0, cluster: 0, local: 0 }), policyRevision: () => 0, monitor: m });
    const text = await metrics.text();
    assert.match(text, /^membrane_l7_http_requests_total\{method="GET",verdict="forwarded"\} 1$/m);
    assert.match(text, /^membrane_l7_http_requests_total\{method="POST",verdict="denied"\} 1$/m);
    assert.match(text, /^membrane_l7_http_responses_total\{method="POST",status="403",verdict="denied"\} 1$/m);
    assert.match(text, /^membrane_l7_http_responses_total\{method="GET",status="200",verdict="forwarded"\} 1$/m);
    assert.match(text, /^membrane_l7_dns_requests_total\{verdict="forwarded"\} 1$/m);
    assert.match(text, /^membrane_l7_dns_responses_total\{verdict="denied",rcode="Refused"\} 1$/m);
    assert.match(text, /^membrane_events_total\{type="l7"\} 7$/m);
  });

  it('a stream reader: takes what the socket takes, drops for a stalled client, tells it how many, disconnects it past the bound', async () => {
    const { m } = monitor([WEB], { count: 100 });
    // A response whose socket accepts `room` bytes, then returns false until drain().
    class FakeRes extends EventEmitter {
      out = '';
      room = Infinity;
      destroyed = false;
      ended = false;
      writeHead() {
        return this;
      }
      write(s: string) {
        this.out += s;
        this.room -= s.length;
        return this.room > 0;
      }
      end() {
        this.ended = true;
      }
      destroy() {
        this.destroyed = true;
        this.emit('close');
      }
      drain(room = Infinity) {
        this.room = room;
        this.emit('drain');
      }
    }
    const lines = (r: FakeRes) => r.out.split('\n').filter(Boolean).map((l) => JSON.parse(l));
    const tick = () => new Promise((r) => setImmediate(r));
    const rec = dropRecord({ reason: 133, source: 7, srcLabel: 2, dstLabel: 300, dstId: 7, frame: tcpFrame('192.0.2.10', '10.0.0.2', 40000, 8080) });
    const logged: string[] = [];
    setLogSink((l) => logged.push(l));
    try {
      const res = new FakeRes();
      res.room = 1; // the first write fills the socket
      const q = parseFlowQuery(new URLSearchParams('follow=1'));
      const s = (await serveFlows(m, res as any, q, { stallMs: 200, log })) as StoreStream;
      m.ingestBatch(packBatch([rec, rec]), 2);
      await tick();
      assert.equal(lines(res).length, 2, 'two flows written, then the socket is full');
      m.ingestBatch(packBatch(Array(250).fill(rec)), 250); // 100 kept: 150 of them lost for the client
      await tick();
      assert.equal(s.dropped, 150);
      assert.equal(m.counters.streams.flows.dropped, 150);
      res.drain();
      for (let i = 0; i < 5; i++) await tick();
      const got = lines(res);
      assert.deepEqual(got[2].lost_events, { source: 'CLIENT_TOO_SLOW', num_events_lost: 150 });
      assert.equal(got.length, 3 + 100, 'then the 100 still stored');
      assert.equal(lostLine(got[2], 'flows'), '150 flows dropped: client too slow');
      // Stalled again, past the bound while flows keep being dropped: disconnected and logged.
      res.room = 0;
      m.ingestBatch(packBatch([rec]), 1);
      await tick();
      m.ingestBatch(packBatch(Array(150).fill(rec)), 150);
      await new Promise((r) => setTimeout(r, 250));
      m.ingestBatch(packBatch(Array(150).fill(rec)), 150);
      assert.equal(res.destroyed, true);
      assert.equal(m.counters.streams.flows.disconnected, 1);
      assert.equal(m.readerCount, 0);
      assert.ok(logged.some((l) => /stream client stayed behind: disconnected/.test(l)));
      // A non-follow query ends after what was stored.
      const res2 = new FakeRes();
      await serveFlows(m, res2 as any, parseFlowQuery(new URLSearchParams('last=5')), { stallMs: 1000, log });
      for (let i = 0; i < 3; i++) await tick();
      assert.equal(lines(res2).length, 5);
      assert.equal(res2.ended, true);
      assert.equal(JSON.parse(lostEventsLine(3, 'n1')).lost_events.num_events_lost, 3);
      // A client gone before its stream starts leaves no reader behind.
      const gone = new FakeRes();
      (gone as any).destroyed = true;
      const s3 = await serveFlows(m, gone as any, parseFlowQuery(new URLSearchParams('follow=1')), { stallMs: 1000, log });
      assert.equal(s3.isClosed, true);
      assert.equal(m.readerCount, 0);
    } finally {
      setLogSink((l) => process.stderr.write(l + '\n'));
    }
  });
});
