/**
 * Prometheus metrics of the agent (prom-client). Datapath counters are read
 * from the kernel's per-CPU metrics map at scrape time; agent-side figures are
 * kept as they happen.
 */
import * as http from 'node:http';
import * as client from 'prom-client';
import type { Logger } from '../util/log';
import type { BpfMap } from '../bpf';
import { DROP_REASONS, metricDirName } from '../datapath/constants';
import type * as gen from '../datapath/maps.gen';
import { MetricsKey, metricsKeyCodec } from '../datapath/metricsmap';
import type { Monitor } from './monitor';

export interface MetricSources {
  datapath: BpfMap<MetricsKey, gen.MetricsValue>;
  endpointsByState(): Record<string, number>;
  identities(): { reserved: number; cluster: number; local: number };
  policyRevision(): number;
  monitor: Monitor;
  /** DNS-aware policy: the FQDN cache's counters and the DNS proxy's (absent: no such metrics). */
  fqdn?: () => { addresses: number; learned: number; expired: number; limitPerName: number; limitPerEndpoint: number; keptInUse: number; responseDelayExceeded: number };
}

/** A counter whose value is read from elsewhere at scrape time (kernel counters). */
function externalCounter(reg: client.Registry, name: string, help: string, labelNames: string[], read: () => { labels: Record<string, string>; value: number }[]) {
  return new client.Counter({
    name,
    help,
    labelNames,
    registers: [reg],
    collect() {
      this.reset();
      for (const r of read()) this.inc(r.labels, Math.max(0, r.value));
    },
  });
}

export class AgentMetrics {
  readonly registry = new client.Registry();
  readonly regeneration: client.Histogram;
  readonly endpointCreate: client.Histogram;
  readonly apiLatency: client.Histogram;
  readonly driftRepaired: client.Counter;

  constructor(src: MetricSources) {
    const reg = this.registry;
    const datapath = () => {
      const rows: { reason: number; dir: string; packets: number; bytes: number }[] = [];
      for (const [k, vs] of src.datapath.entriesPerCpu()) {
        if (!vs.some((v) => v.count || v.bytes)) continue; // an array: untouched slots are zero
        rows.push({
          reason: k.reason,
          dir: metricDirName(k.dir),
          packets: vs.reduce((s, v) => s + Number(v.count), 0),
          bytes: vs.reduce((s, v) => s + Number(v.bytes), 0),
        });
      }
      return rows;
    };
    const reasonName = (r: number) => DROP_REASONS[r]?.text ?? `reason ${r}`;
    externalCounter(reg, 'membrane_forward_count_total', 'Packets forwarded by the datapath, by direction', ['direction'], () =>
      datapath().filter((r) => r.reason === 0).map((r) => ({ labels: { direction: r.dir }, value: r.packets })),
    );
    externalCounter(reg, 'membrane_forward_bytes_total', 'Bytes forwarded by the datapath, by direction', ['direction'], () =>
      datapath().filter((r) => r.reason === 0).map((r) => ({ labels: { direction: r.dir }, value: r.bytes })),
    );
    externalCounter(reg, 'membrane_drop_count_total', 'Packets dropped by the datapath, by reason and direction', ['reason', 'reason_code', 'direction'], () =>
      datapath().filter((r) => r.reason !== 0).map((r) => ({ labels: { reason: reasonName(r.reason), reason_code: String(r.reason), direction: r.dir }, value: r.packets })),
    );
    externalCounter(reg, 'membrane_drop_bytes_total', 'Bytes dropped by the datapath, by reason and direction', ['reason', 'reason_code', 'direction'], () =>
      datapath().filter((r) => r.reason !== 0).map((r) => ({ labels: { reason: reasonName(r.reason), reason_code: String(r.reason), direction: r.dir }, value: r.bytes })),
    );
    const mon = src.monitor;
    externalCounter(reg, 'membrane_policy_verdicts_total', 'Policy verdict events seen for new flows and denials', ['action'], () => [
      { labels: { action: 'allowed' }, value: mon.counters.verdicts.allowed },
      { labels: { action: 'denied' }, value: mon.counters.verdicts.denied },
    ]);
    externalCounter(reg, 'membrane_events_total', 'Events received (datapath events by type, and l7 records from the proxies)', ['type'], () =>
      Object.entries(mon.counters.events).map(([type, value]) => ({ labels: { type }, value })),
    );
    externalCounter(reg, 'membrane_flows_seen_total', 'Flows decoded and stored by the agent', [], () => [{ labels: {}, value: mon.counters.flows }]);
    externalCounter(reg, 'membrane_flows_lost_total', 'Events lost: the ring buffer was full (kernel), or the agent could not decode a record or its event loop was too far behind (agent)', ['where'], () => [
      { labels: { where: 'kernel' }, value: mon.lostEvents() },
      { labels: { where: 'agent' }, value: mon.agentLost() },
    ]);
    externalCounter(reg, 'membrane_flows_stream_dropped_total', 'Flows and events dropped for streaming clients too slow to take them, by stream', ['stream'], () =>
      Object.entries(mon.counters.streams).map(([stream, c]) => ({ labels: { stream }, value: c.dropped })),
    );
    externalCounter(reg, 'membrane_flows_stream_disconnects_total', 'Streaming clients disconnected for staying behind, by stream', ['stream'], () =>
      Object.entries(mon.counters.streams).map(([stream, c]) => ({ labels: { stream }, value: c.disconnected })),
    );
    const split = (m: Map<string, number>, names: string[]) =>
      [...m].map(([k, value]) => {
        const parts = k.split('\0');
        return { labels: Object.fromEntries(names.map((n, i) => [n, parts[i] ?? ''])), value };
      });
    externalCounter(reg, 'membrane_l7_http_requests_total', 'HTTP requests seen by the L7 proxy, by method and verdict', ['method', 'verdict'], () => split(mon.counters.l7.httpRequests, ['method', 'verdict']));
    externalCounter(reg, 'membrane_l7_http_responses_total', 'HTTP responses seen by the L7 proxy, by method, status and verdict', ['method', 'status', 'verdict'], () =>
      split(mon.counters.l7.httpResponses, ['method', 'status', 'verdict']),
    );
    externalCounter(reg, 'membrane_l7_dns_requests_total', 'DNS queries seen by the DNS proxy, by verdict', ['verdict'], () => split(mon.counters.l7.dnsRequests, ['verdict']));
    externalCounter(reg, 'membrane_l7_dns_responses_total', 'DNS responses seen by the DNS proxy, by verdict and rcode', ['verdict', 'rcode'], () => split(mon.counters.l7.dnsResponses, ['verdict', 'rcode']));
    if (src.fqdn) {
      const fq = src.fqdn;
      new client.Gauge({
        name: 'membrane_fqdn_addresses',
        help: 'Addresses learned from DNS answers for toFQDNs selectors, held now',
        registers: [reg],
        collect() {
          this.set(fq().addresses);
        },
      });
      externalCounter(reg, 'membrane_fqdn_addresses_learned_total', 'Addresses learned from DNS answers', [], () => [{ labels: {}, value: fq().learned }]);
      externalCounter(reg, 'membrane_fqdn_addresses_expired_total', 'Learned addresses removed after their TTL', [], () => [{ labels: {}, value: fq().expired }]);
      externalCounter(reg, 'membrane_fqdn_limit_hits_total', 'Learned addresses refused or evicted by a limit (per-name: --tofqdns-endpoint-max-ip-per-hostname, per-endpoint: --tofqdns-endpoint-max-ips)', ['limit'], () => [
        { labels: { limit: 'per-name' }, value: fq().limitPerName },
        { labels: { limit: 'per-endpoint' }, value: fq().limitPerEndpoint },
      ]);
      externalCounter(reg, 'membrane_fqdn_response_delay_exceeded_total', 'DNS answers released before their addresses were in the maps (--tofqdns-proxy-response-max-delay exceeded)', [], () => [
        { labels: {}, value: fq().responseDelayExceeded },
      ]);
    }
    new client.Gauge({
      name: 'membrane_flows_stored',
      help: 'Flows held in the agent flow buffer',
      registers: [reg],
      collect() {
        this.set(mon.stored);
      },
    });
    new client.Gauge({
      name: 'membrane_flows_memory_bytes',
      help: 'Bytes held by the agent flow buffer (records, names of their ends, L7 records)',
      registers: [reg],
      collect() {
        this.set(mon.memory().bytes);
      },
    });
    new client.Gauge({
      name: 'membrane_endpoints',
      help: 'Endpoints by state',
      labelNames: ['state'],
      registers: [reg],
      collect() {
        this.reset();
        for (const [state, n] of Object.entries(src.endpointsByState())) this.set({ state }, n);
      },
    });
    new client.Gauge({
      name: 'membrane_identities',
      help: 'Security identities by kind',
      labelNames: ['kind'],
      registers: [reg],
      collect() {
        for (const [kind, n] of Object.entries(src.identities())) this.set({ kind }, n);
      },
    });
    new client.Gauge({
      name: 'membrane_policy_revision',
      help: 'Current policy repository revision',
      registers: [reg],
      collect() {
        this.set(src.policyRevision());
      },
    });
    const buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
    this.regeneration = new client.Histogram({ name: 'membrane_endpoint_regeneration_duration_seconds', help: 'Time to bring one endpoint to the current policy', buckets, registers: [reg] });
    this.endpointCreate = new client.Histogram({ name: 'membrane_endpoint_create_duration_seconds', help: 'Time from CNI ADD request to a ready endpoint, inside the agent', buckets, registers: [reg] });
    this.apiLatency = new client.Histogram({
      name: 'membrane_api_request_duration_seconds',
      help: 'API request latency',
      labelNames: ['method', 'route', 'status'],
      buckets,
      registers: [reg],
    });
    this.driftRepaired = new client.Counter({
      name: 'membrane_map_drift_repaired_total',
      help: 'Map entries the periodic resync found changed or missing behind the agent and repaired',
      labelNames: ['map'],
      registers: [reg],
    });
    client.collectDefaultMetrics({ register: reg, prefix: 'membrane_agent_' });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/** Prometheus on TCP, only when asked for (--metrics-address HOST:PORT). Only GET /metrics is served. */
export function serveMetricsTcp(address: string, metrics: AgentMetrics, log: Logger): Promise<http.Server> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i);
  const port = Number(address.slice(i + 1));
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics is served here\n');
      return;
    }
    metrics.text().then(
      (t) => res.writeHead(200, { 'content-type': metrics.contentType }).end(t),
      (e) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e)),
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new Error(`metrics-address ${address}: ${e.message}`)));
    server.listen(port, host, () => {
      log.info('serving Prometheus metrics', { address });
      resolve(server);
    });
  });
}
