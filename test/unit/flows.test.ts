import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FilterError, matchFlow, parseFlowQuery } from '../../src/monitor/filter';
import { Enricher, toFlow } from '../../src/monitor/flow';
import { decodePacket } from '../../src/monitor/packet';
import { flowCompact, monitorLine } from '../../src/cli/flowfmt';
import { ethernet, ipv4, tcp } from '../helpers/packet';

const enricher: Enricher = {
  nodeName: 'n1',
  endpointByIp: (ip) => (ip === '10.0.0.2' ? { id: 7, identity: 300, namespace: 'shop', podName: 'web-1', labels: ['k8s:app=web'] } : undefined),
  endpointById: (id) => (id === 7 ? { id: 7, identity: 300, namespace: 'shop', podName: 'web-1', labels: ['k8s:app=web'] } : undefined),
  identityLabels: (id) => (id === 2 ? ['reserved:world'] : []),
  ifName: () => 'lxc0',
};

const a4 = (s: string) => Buffer.from(s.split('.').map(Number));

function synFrame(): Buffer {
  const src = a4('192.0.2.10');
  const dst = a4('10.0.0.2');
  const t = tcp({ sport: 40000, dport: 8080, flags: 0x02, src, dst });
  return ethernet({ dst: Buffer.alloc(6, 1), src: Buffer.alloc(6, 2), type: 0x0800, payload: ipv4({ src, dst, proto: 6, payload: t }) });
}

describe('flows', () => {
  it('decodes captured packets', () => {
    const p = decodePacket(synFrame());
    assert.equal(p.ip?.source, '192.0.2.10');
    assert.equal(p.tcp?.destination_port, 8080);
    assert.deepEqual(p.tcp?.flags, { SYN: true });
    assert.deepEqual(decodePacket(Buffer.alloc(5)), {});
  });

  it('turns a drop event into an enriched DROPPED flow and formats it', () => {
    const ev = { type: 'drop' as const, time: Date.UTC(2026, 10, 22, 7, 0, 0), reason: 133, source: 7, hash: 0xabc, srcLabel: 2, dstLabel: 300, dstId: 7, line: 1, file: 1, ifindex: 9, origLen: 60, data: synFrame(), direction: 'INGRESS' as const };
    const f = toFlow(ev, enricher);
    assert.equal(f.verdict, 'DROPPED');
    assert.equal(f.drop_reason, 133);
    assert.equal(f.destination.pod_name, 'web-1');
    assert.equal(f.source.identity, 2);
    assert.equal(flowCompact(f), 'Nov 22 07:00:00.000: 192.0.2.10:40000 (world) -> shop/web-1:8080 (ID:300) Policy denied DROPPED (TCP Flags: SYN)');
    const line = monitorLine({ event: { ...ev, data: ev.data.toString('hex') }, flow: f });
    assert.equal(line, 'xx drop (Policy denied) flow 0xabc to endpoint 7, ifindex 9, file 1 line 1, , identity world->300: 192.0.2.10:40000 -> 10.0.0.2:8080 tcp SYN');
  });

  it('filters: OR within a filter, AND across, not, endpoint sides, validation naming the culprit', () => {
    const ev = { type: 'drop' as const, time: Date.now(), reason: 181, source: 7, hash: 1, srcLabel: 2, dstLabel: 300, dstId: 7, line: 1, file: 1, ifindex: 9, origLen: 60, data: synFrame(), direction: 'INGRESS' as const };
    const f = toFlow(ev, enricher);
    const m = (q: string) => matchFlow(f, parseFlowQuery(new URLSearchParams(q)).filters);
    assert.ok(m('to_pod=shop/web'));
    assert.ok(!m('from_pod=shop/web'));
    assert.ok(m('pod=web-1'));
    assert.ok(m('verdict=FORWARDED&verdict=DROPPED'));
    assert.ok(!m('verdict=DROPPED&protocol=udp'));
    assert.ok(m('not.verdict=FORWARDED'));
    assert.ok(m('drop_reason=181'));
    assert.ok(m('ip=192.0.2.0/24'));
    assert.ok(m('to_port=8080&tcp_flags=SYN'));
    assert.ok(!m('tcp_flags=SYN,ACK'));
    assert.ok(m('label=app=web&traffic_direction=ingress&type=drop'));
    assert.throws(() => parseFlowQuery(new URLSearchParams('colour=red')), FilterError);
    assert.throws(() => parseFlowQuery(new URLSearchParams('port=http')), /port: "http" is not a number/);
    assert.throws(() => parseFlowQuery(new URLSearchParams('since=yesterday')), /since: "yesterday"/);
  });
});
