/**
 * The agent's REST API (basePath /v1) on a Unix socket, owner-only (0600).
 * Every route declares JSON schemas for its body, query string and path
 * parameters, checked by Fastify's own validator (Ajv) with nothing coerced
 * and nothing dropped: an unknown field or a wrong type is a 400 naming the
 * field path and the value. Paths and shapes follow the reference system's API.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import Fastify, { FastifyError, FastifyInstance } from 'fastify';
import type { Agent } from './agent';
import type { AgentConfig } from './config';
import type { ClusterNode } from '../node/cluster';
import { VERSION } from './status';
import { MAP_NAMES, dumpMap, dumpPolicyMap, flushConntrack } from '../datapath/dump';
import { PolicyTraceError } from '../policy/trace';
import { EndpointError } from '../endpoint/manager';
import { ResourceValidationError, kindInfo, KINDS } from '../store/kinds';
import { FILTER_FIELDS, FilterError, parseFlowQuery } from '../monitor/filter';
import { MONITOR_TYPES, serveFlows, serveMonitor } from '../monitor/stream';
import { UnknownNodeError, relayFlows, relayFollow, relayTargets } from '../monitor/relay';
import { ifnameProblem } from '../netlink/ifname';
import { MAX_DEPTH, showValue, tooDeep } from '../util/depth';
import { CNI_ENV } from '../cni/plugin';
import { CniRequest, endpointBackend, serveCni } from '../cni/backend';

/** Linux interface names (dev_valid_name): not "." or "..", no '/', ':' or whitespace; bytes are checked by ifnameProblem. */
const IFNAME_PATTERN = '^(?!\\.\\.?$)[^/:\\s]+$';
import { StoreError } from '../store/types';
import type { Resource } from '../store/types';
import { POLICY_KINDS } from '../policy/status';
import { KvstoreUnavailableError } from '../kvstore/errors';

const attachment = {
  type: 'object',
  required: ['containerId', 'ifname'],
  additionalProperties: false,
  properties: {
    containerId: { type: 'string', minLength: 1, maxLength: 256 },
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: IFNAME_PATTERN },
  },
} as const;

const createBody = {
  type: 'object',
  required: ['containerId', 'ifname', 'netns'],
  additionalProperties: false,
  properties: {
    containerId: { type: 'string', minLength: 1, maxLength: 256 },
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: IFNAME_PATTERN },
    netns: { type: 'string', minLength: 1, maxLength: 4096, pattern: '^/' },
    args: { type: 'object', additionalProperties: { type: 'string' } },
    mtu: { type: 'integer', minimum: 576, maximum: 65535 },
  },
} as const;

const checkBody = {
  type: 'object',
  required: ['containerId', 'ifname'],
  additionalProperties: false,
  properties: {
    containerId: { type: 'string', minLength: 1, maxLength: 256 },
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: IFNAME_PATTERN },
    netns: { type: 'string', maxLength: 4096 },
  },
} as const;

const gcBody = {
  type: 'object',
  required: ['validAttachments'],
  additionalProperties: false,
  properties: { validAttachments: { type: 'array', items: attachment } },
} as const;

/** One CNI invocation forwarded by bin/membrane-cni: its CNI_* variables and its stdin (at most 4 MiB there). */
const cniBody = {
  type: 'object',
  required: ['env', 'stdin'],
  additionalProperties: false,
  properties: {
    env: { type: 'object', additionalProperties: false, properties: Object.fromEntries(CNI_ENV.map((k) => [k, { type: 'string', maxLength: 65536 }])) },
    stdin: { type: 'string', maxLength: 4 * 1024 * 1024 },
  },
} as const;
/** The header carrying the plugin's exit code (the body is what it prints). */
export const CNI_EXIT_HEADER = 'membrane-cni-exit-code';

/** No query parameters at all. */
const noQuery = { type: 'object', additionalProperties: false, properties: {} } as const;
const idParams = { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'string', pattern: '^[0-9]{1,10}$' } } } as const;
/** A query parameter given once or repeated (?type=a&type=b). */
const oneOrMany = { anyOf: [{ type: 'string', maxLength: 4096 }, { type: 'array', maxItems: 64, items: { type: 'string', maxLength: 4096 } }] } as const;
const flowsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    ...Object.fromEntries(FILTER_FIELDS.flatMap((f) => [[f, oneOrMany], [`not.${f}`, oneOrMany]])),
    last: { type: 'string', pattern: '^[0-9]{1,9}$' },
    node: oneOrMany,
    all_nodes: { type: 'string', enum: ['1', 'true'] },
    follow: { type: 'string', enum: ['0', '1', 'true', 'false'] },
    since: { type: 'string', maxLength: 64 },
    until: { type: 'string', maxLength: 64 },
  },
};

/** JSON-pointer segments of an Ajv instancePath. */
function pointerSegments(instancePath: string): string[] {
  return instancePath
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

function fieldPath(where: string, segs: string[]): string {
  return where + segs.map((s) => (/^[0-9]+$/.test(s) ? `[${s}]` : `.${s}`)).join('');
}

/**
 * Ajv errors -> "body.mtu: must be integer, got \"1400\"", "body.extra: unknown
 * field (allowed: ...)"; `field` is the top-level property concerned (the CNI
 * plugin maps it to the variable or setting it came from).
 */
export function describeValidation(where: string, errors: { keyword: string; instancePath: string; message?: string; params: Record<string, unknown>; data?: unknown; parentSchema?: any }[]) {
  const details = errors.map((v) => {
    const segs = pointerSegments(v.instancePath);
    if (v.keyword === 'additionalProperties') {
      segs.push(String(v.params.additionalProperty));
      const allowed = Object.keys(v.parentSchema?.properties ?? {});
      return { segs, text: `${fieldPath(where, segs)}: unknown field${allowed.length ? ` (allowed: ${allowed.join(', ')})` : ''}` };
    }
    if (v.keyword === 'required') {
      segs.push(String(v.params.missingProperty));
      return { segs, text: `${fieldPath(where, segs)}: is required` };
    }
    return { segs, text: `${fieldPath(where, segs)}: ${v.message ?? 'is invalid'}, got ${showValue(v.data)}` };
  });
  return { details: details.map((d) => d.text), field: details[0]?.segs[0] };
}

const STATUS_OF: Record<EndpointError['kind'], number> = {
  conflict: 409,
  invalid: 400,
  'not-found': 404,
  exhausted: 507,
  internal: 500,
};

function serviceView(f: import('../service/manager').Frontend) {
  return {
    id: f.revNat,
    frontend: `${f.ip}:${f.port}/${f.protocol}`,
    service: f.service,
    portName: f.portName || undefined,
    type: f.type,
    algorithm: f.algorithm,
    sessionAffinity: f.affinityTimeout ? { clientIP: { timeoutSeconds: f.affinityTimeout } } : undefined,
    externalTrafficPolicy: f.type === 'NodePort' ? (f.local ? 'Local' : 'Cluster') : undefined,
    backends: f.backends.map((b) => ({ id: b.id, address: `${b.ip}:${b.port}/${b.protocol}`, state: b.terminating ? 'terminating' : 'active' })),
    slots: f.algorithm === 'maglev' ? f.slots.length : undefined,
  };
}

export function buildApi(agent: Agent): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 8 * 1024 * 1024,
    // Nothing coerced ("1400" is not a number), nothing dropped (an unknown field is an error).
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false, verbose: true } },
  });

  // A body nested deeper than any resource needs is refused before anything walks it.
  app.addHook('preValidation', async (req, reply) => {
    const at = req.body !== undefined ? tooDeep(req.body, MAX_DEPTH, 'body') : undefined;
    if (at) return reply.status(400).send({ error: `${at}: nested more than ${MAX_DEPTH} levels deep`, kind: 'invalid', field: 'body' });
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err instanceof ResourceValidationError) {
      return reply.status(400).send({ error: err.message, kind: 'invalid', details: err.problems, total: err.total });
    }
    if (err instanceof EndpointError) {
      return reply.status(STATUS_OF[err.kind]).send({ error: err.message, kind: err.kind, field: err.field });
    }
    if (err instanceof StoreError) {
      const status = { unavailable: 503, conflict: 409, invalid: 400, internal: 500 }[err.kind];
      if (status >= 500) agent.log.error('API request failed', { method: req.method, url: req.url, error: err });
      return reply.status(status).send({ error: err.message, kind: err.kind });
    }
    if (err instanceof KvstoreUnavailableError) {
      return reply.status(503).send({ error: err.message, kind: 'unavailable' });
    }
    if (err.validation) {
      const ctx = err.validationContext ?? 'body';
      const { details, field } = describeValidation(ctx === 'querystring' ? 'query' : ctx, err.validation as any);
      return reply.status(400).send({ error: `invalid request: ${details.join('; ')}`, kind: 'invalid', details, field });
    }
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) agent.log.error('API request failed', { method: req.method, url: req.url, error: err });
    return reply.status(status).send({ error: err.message, kind: status >= 500 ? 'internal' : 'invalid' });
  });

  app.addHook('onResponse', async (req, reply) => {
    agent.recordApiLatency(req.method, req.routeOptions.url ?? req.url, reply.statusCode, reply.elapsedTime);
  });

  app.get('/v1/healthz', { schema: { querystring: noQuery } }, async () => ({ status: 'ok' }));
  app.get('/v1/status', { schema: { querystring: noQuery } }, async () => {
    await agent.proxy.refreshStatus(500);
    return agent.status();
  });

  app.get('/v1/endpoint', { schema: { querystring: noQuery } }, async () => agent.endpoints.list());
  app.get<{ Params: { id: string } }>('/v1/endpoint/:id', { schema: { params: idParams, querystring: noQuery } }, async (req, reply) => {
    const ep = agent.endpoints.get(Number(req.params.id));
    if (!ep) return reply.status(404).send({ error: `endpoint ${req.params.id} not found`, kind: 'not-found' });
    return ep;
  });
  app.put('/v1/endpoint', { schema: { body: createBody, querystring: noQuery } }, async (req, reply) => {
    const bad = ifnameProblem((req.body as { ifname: string }).ifname);
    if (bad) throw new EndpointError(`ifname: ${bad}`, 'invalid', 'ifname');
    const t0 = process.hrtime.bigint();
    const ep = await agent.endpoints.create(req.body as any);
    const durationMs = Number(process.hrtime.bigint() - t0) / 1e6;
    return reply.status(201).send({ endpoint: ep, router: agent.routerAddress(), durationMs });
  });
  app.delete('/v1/endpoint', { schema: { body: attachment, querystring: noQuery } }, async (req) => {
    const b = req.body as { containerId: string; ifname: string };
    return agent.endpoints.delete(b.containerId, b.ifname);
  });
  app.post('/v1/endpoint/check', { schema: { body: checkBody, querystring: noQuery } }, async (req) => {
    const b = req.body as { containerId: string; ifname: string; netns?: string };
    const problems = agent.endpoints.check(b.containerId, b.ifname, b.netns);
    return { ok: problems.length === 0, problems };
  });
  app.post('/v1/gc', { schema: { body: gcBody, querystring: noQuery } }, async (req) => {
    return agent.endpoints.gc((req.body as { validAttachments: { containerId: string; ifname: string }[] }).validAttachments);
  });

  // The CNI plugin: bin/membrane-cni forwards its invocation, prints the body and exits with the header's code.
  const cni = endpointBackend(agent.endpoints, () => agent.routerAddress());
  app.post('/v1/cni', { bodyLimit: 32 * 1024 * 1024, schema: { body: cniBody, querystring: noQuery } }, async (req, reply) => {
    const out = await serveCni(req.body as CniRequest, cni, agent.log);
    reply.header(CNI_EXIT_HEADER, String(out.exitCode)).type('application/json; charset=utf-8');
    return reply.send(out.stdout ? out.stdout + '\n' : '');
  });

  app.get('/v1/identity', { schema: { querystring: noQuery } }, async () => agent.endpoints.identities.list());
  app.get<{ Params: { id: string } }>('/v1/identity/:id', { schema: { params: idParams, querystring: noQuery } }, async (req, reply) => {
    const ident = agent.endpoints.identities.get(Number(req.params.id));
    if (!ident) return reply.status(404).send({ error: `identity ${req.params.id} not found`, kind: 'not-found' });
    return ident;
  });
  app.get('/v1/node', { schema: { querystring: noQuery } }, async () => {
    if (agent.cluster) return agent.cluster.nodeList();
    // Without a cluster store the node is alone.
    return [{ name: agent.cfg.nodeName, addresses: [{ type: 'RouterIP', ip: agent.routerAddress() }], podCIDRs: [agent.cfg.podCidr], identities: agent.identities.list().filter((i) => !i.reserved && !i.local).length, alive: true, self: true, health: 'ok' }];
  });
  app.get('/v1/ipam', { schema: { querystring: noQuery } }, async () => ({ cidr: agent.cfg.podCidr, router: agent.routerAddress(), allocations: agent.endpoints.ipam.list() }));

  app.get('/v1/service', { schema: { querystring: noQuery } }, async () => agent.services.frontends.map(serviceView));
  app.get<{ Params: { id: string } }>('/v1/service/:id', { schema: { params: idParams, querystring: noQuery } }, async (req, reply) => {
    const f = agent.services.frontends.find((x) => String(x.revNat) === req.params.id);
    if (!f) return reply.status(404).send({ error: `service frontend ${req.params.id} not found`, kind: 'not-found' });
    return serviceView(f);
  });

  app.delete<{ Querystring: { services?: string } }>('/v1/map/mb_ct', { schema: { querystring: { type: 'object', additionalProperties: false, properties: { services: { type: 'string', enum: ['0', '1'] } } } } }, async (req) => ({ deleted: flushConntrack(agent.dp, req.query.services === '1') }));

  app.get('/v1/map', { schema: { querystring: noQuery } }, async () => MAP_NAMES);
  app.get<{ Params: { name: string } }>('/v1/map/:name', { schema: { params: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string', pattern: '^[a-z0-9_]{1,64}$' } } }, querystring: noQuery } }, async (req, reply) => {
    const dump = dumpMap(agent.dp, req.params.name);
    if (!dump) return reply.status(404).send({ error: `map ${req.params.name} not found (known: ${MAP_NAMES.join(', ')})`, kind: 'not-found' });
    return dump;
  });

  const objectsBody = {
    type: 'object',
    required: ['objects'],
    additionalProperties: false,
    properties: { objects: { type: 'array', items: { type: 'object' }, maxItems: 100000 } },
  } as const;
  const refsBody = {
    type: 'object',
    required: ['refs'],
    additionalProperties: false,
    properties: {
      refs: {
        type: 'array',
        items: {
          type: 'object',
          required: ['kind', 'name'],
          additionalProperties: false,
          properties: { kind: { type: 'string', minLength: 1 }, namespace: { type: 'string' }, name: { type: 'string', minLength: 1 } },
        },
      },
    },
  } as const;
  const traceBody = {
    type: 'object',
    required: ['src', 'dst', 'dport'],
    additionalProperties: false,
    properties: {
      src: { type: 'string', minLength: 1 },
      dst: { type: 'string', minLength: 1 },
      dport: { type: 'integer', minimum: 0, maximum: 65535 },
      protocol: { type: 'string', enum: ['TCP', 'UDP', 'SCTP', 'ICMP', 'tcp', 'udp', 'sctp', 'icmp'] },
      http: {
        type: 'object',
        additionalProperties: false,
        required: ['method', 'path'],
        properties: {
          method: { type: 'string', minLength: 1 },
          path: { type: 'string', minLength: 1 },
          host: { type: 'string' },
          headers: { type: 'array', items: { type: 'string', minLength: 1 } },
        },
      },
    },
  } as const;

  const normaliseRefs = (refs: { kind: string; namespace?: string; name: string }[]) =>
    refs.map((r, i) => {
      const info = kindInfo(r.kind);
      if (!info) throw Object.assign(new Error(`refs[${i}].kind: "${r.kind}" is not a known kind (${KINDS.map((k) => k.kind).join(', ')})`), { statusCode: 400 });
      return { kind: info.kind, name: r.name, namespace: info.namespaced ? r.namespace || 'default' : undefined };
    });

  // Observability: Prometheus metrics, flows, the raw event stream.
  app.get('/v1/metrics', { schema: { querystring: noQuery } }, async (req, reply) => {
    reply.header('content-type', agent.metrics.contentType);
    return agent.metrics.text();
  });

  /** NDJSON: stored flows matching the filters, then (follow=1) every new one until the client goes away (src/monitor/stream.ts). */
  app.get('/v1/flows', { schema: { querystring: flowsQuery } }, async (req, reply) => {
    let q;
    const params = new URLSearchParams(req.url.split('?')[1] ?? '');
    const nodes = params.getAll('node').flatMap((n) => n.split(',').filter(Boolean));
    const all = params.has('all_nodes');
    params.delete('node');
    params.delete('all_nodes');
    try {
      q = parseFlowQuery(params);
    } catch (e) {
      if (e instanceof FilterError) return reply.status(400).send({ error: e.message, kind: 'invalid' });
      throw e;
    }
    if (nodes.length || all) {
      // The cluster-wide view: every node asked node asks, merged by time.
      if (!agent.cluster) return reply.status(400).send({ error: 'node/all_nodes: only in cluster mode (--kvstore-endpoints)', kind: 'invalid', field: all ? 'all_nodes' : 'node' });
      let targets;
      try {
        targets = relayTargets(agent.cluster.nodes.all(), agent.cfg.nodeName, agent.cfg.socket, all ? 'all' : nodes);
      } catch (e) {
        if (e instanceof UnknownNodeError) return reply.status(404).send({ error: e.message, kind: 'not-found', field: 'node' });
        throw e;
      }
      if (q.follow) {
        reply.hijack();
        relayFollow(targets, params, reply.raw, { token: agent.relayToken });
        return;
      }
      const r = await relayFlows(targets, params, { token: agent.relayToken });
      reply.header('content-type', 'application/x-ndjson');
      return r.errors.map((e) => JSON.stringify({ node_error: e }) + '\n').join('') + r.flows.map((f) => JSON.stringify(f) + '\n').join('');
    }
    reply.hijack();
    await serveFlows(agent.monitor, reply.raw, q, { stallMs: agent.cfg.flowsStreamTimeout * 1000, log: agent.log });
  });

  /** NDJSON stream of decoded events ({event, flow}) for `membrane monitor`. */
  app.get<{ Querystring: { type?: string | string[]; related_to?: string } }>('/v1/monitor', { schema: { querystring: { type: 'object', additionalProperties: false, properties: { type: oneOrMany, related_to: { type: 'string', pattern: '^[0-9]{1,10}$' } } } } }, async (req, reply) => {
    const types = ([] as string[]).concat(req.query.type ?? []).flatMap((t) => t.split(','));
    for (const t of types) {
      if (!MONITOR_TYPES.includes(t)) return reply.status(400).send({ error: `type: "${t}" is not ${MONITOR_TYPES.join(', ')}`, kind: 'invalid' });
    }
    const related = req.query.related_to !== undefined ? Number(req.query.related_to) : undefined;
    if (related !== undefined && !Number.isInteger(related)) return reply.status(400).send({ error: `related_to: "${req.query.related_to}" is not an endpoint id`, kind: 'invalid' });
    reply.hijack();
    serveMonitor(agent.monitor, reply.raw, { types, relatedTo: related }, { stallMs: agent.cfg.flowsStreamTimeout * 1000, log: agent.log });
  });

  // Resources in Kubernetes shapes: apply (all or nothing), get, delete.
  app.post('/v1/apply', { schema: { body: objectsBody, querystring: noQuery } }, async (req) => agent.apply((req.body as { objects: unknown[] }).objects));
  app.post('/v1/delete', { schema: { body: refsBody, querystring: noQuery } }, async (req) => agent.deleteResources(normaliseRefs((req.body as any).refs)));
  app.get<{ Params: { kind: string }; Querystring: { namespace?: string; name?: string } }>('/v1/resources/:kind', { schema: { params: { type: 'object', required: ['kind'], additionalProperties: false, properties: { kind: { type: 'string', pattern: '^[A-Za-z]{1,64}$' } } }, querystring: { type: 'object', additionalProperties: false, properties: { namespace: { type: 'string', maxLength: 253 }, name: { type: 'string', maxLength: 253 } } } } }, async (req, reply) => {
    const info = kindInfo(req.params.kind);
    if (!info) return reply.status(404).send({ error: `unknown kind "${req.params.kind}" (${KINDS.map((k) => k.kind).join(', ')})`, kind: 'not-found' });
    const ns = info.namespaced ? req.query.namespace : undefined;
    if (req.query.name) {
      const o = agent.store.get({ kind: info.kind, namespace: info.namespaced ? ns || 'default' : undefined, name: req.query.name });
      if (!o) return reply.status(404).send({ error: `${info.kind} ${ns ? ns + '/' : ''}${req.query.name} not found`, kind: 'not-found' });
      return withStatus(info.kind, [o]);
    }
    return withStatus(info.kind, agent.store.list(info.kind, ns));
  });

  // Policy kinds in cluster mode carry the status the operator aggregated (etcd unreachable: without it).
  const withStatus = async <T extends Resource>(kind: string, objs: T[]): Promise<T[]> => {
    if (!agent.cluster || !(POLICY_KINDS as readonly string[]).includes(kind)) return objs;
    try {
      return await agent.cluster.withPolicyStatus(kind, objs);
    } catch {
      return objs;
    }
  };

  // Policy.
  app.get('/v1/policy', { schema: { querystring: noQuery } }, async () => ({ revision: agent.policy.revision, policies: agent.policy.repo.objects() }));
  app.put('/v1/policy', { schema: { body: objectsBody, querystring: noQuery } }, async (req) => {
    const objects = (req.body as { objects: any[] }).objects;
    objects.forEach((o, i) => {
      if (!['NetworkPolicy', 'CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy'].includes(o?.kind)) {
        throw Object.assign(new Error(`objects[${i}].kind: ${JSON.stringify(o?.kind)} is not a policy kind`), { statusCode: 400 });
      }
    });
    return agent.apply(objects);
  });
  app.delete('/v1/policy', { schema: { body: { type: 'object', additionalProperties: false, properties: { all: { type: 'boolean' }, refs: refsBody.properties.refs } }, querystring: noQuery } }, async (req) => {
    const b = req.body as { all?: boolean; refs?: { kind: string; namespace?: string; name: string }[] };
    const refs = b.all
      ? agent.policy.repo.objects().map((o) => ({ kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name }))
      : normaliseRefs(b.refs ?? []);
    return agent.deleteResources(refs);
  });
  app.get<{ Params: { revision: string }; Querystring: { timeout?: string } }>('/v1/policy/wait/:revision', { schema: { params: { type: 'object', required: ['revision'], additionalProperties: false, properties: { revision: { type: 'string', pattern: '^[0-9]{1,15}$' } } }, querystring: { type: 'object', additionalProperties: false, properties: { timeout: { type: 'string', pattern: '^[0-9]{1,6}(\\.[0-9]{1,3})?$' } } } } }, async (req, reply) => {
    const rev = Number(req.params.revision);
    const timeoutS = Number(req.query.timeout ?? 30);
    if (!Number.isInteger(rev) || rev < 0) return reply.status(400).send({ error: `revision: "${req.params.revision}" is not a revision number`, kind: 'invalid' });
    const ok = await agent.changes.waitForRevision(rev, Math.max(0, Math.min(timeoutS, 600)) * 1000);
    if (!ok) return reply.status(504).send({ error: `timed out after ${timeoutS}s waiting for every endpoint to reach policy revision ${rev}`, kind: 'timeout' });
    return { revision: rev, reached: true };
  });
  app.post('/v1/policy/trace', { schema: { body: traceBody, querystring: noQuery } }, async (req, reply) => {
    const b = req.body as { src: string; dst: string; dport: number; protocol?: string; http?: { method: string; path: string; host?: string; headers?: string[] } };
    try {
      return agent.tracer.trace({ ...b, protocol: b.protocol ?? 'TCP' });
    } catch (e) {
      if (e instanceof PolicyTraceError) return reply.status(400).send({ error: e.message, kind: 'invalid', field: e.field });
      throw e;
    }
  });
  app.get('/v1/policy/selectors', { schema: { querystring: noQuery } }, async () => agent.policy.cache.list());
  app.get('/v1/fqdn/cache', { schema: { querystring: noQuery } }, async () => agent.fqdn.cache.list());
  app.get<{ Params: { id: string } }>('/v1/endpoint/:id/policy', { schema: { params: idParams, querystring: noQuery } }, async (req, reply) => {
    const ep = agent.endpoints.get(Number(req.params.id));
    const entries = ep && dumpPolicyMap(agent.dp, ep.id, agent.identities);
    if (!ep || !entries) return reply.status(404).send({ error: `endpoint ${req.params.id} not found`, kind: 'not-found' });
    return { endpoint: ep.id, identity: ep.identity, revision: ep.policy.revision, entries };
  });

  return app;
}

/** Serve the API on a Unix socket created owner-only (no window with wider access). */
/**
 * The API while the agent waits for its pod CIDR (cluster pool): `status`
 * says what it waits for (and the operator's error, if any); every other
 * route answers 503.
 */
export function buildWaitingApi(status: () => unknown): FastifyInstance {
  const app = Fastify({ logger: false });
  const waiting = { error: 'the agent is waiting for its pod CIDR from the operator (cluster pool); see membrane status', kind: 'unavailable' };
  app.get('/v1/status', async () => status());
  app.get('/v1/healthz', async (_req, reply) => reply.status(503).send({ status: 'waiting-for-pod-cidr' }));
  // CNI: "try again later" (11), as while the agent is unreachable.
  app.post('/v1/cni', { bodyLimit: 32 * 1024 * 1024 }, async (_req, reply) => {
    reply.header(CNI_EXIT_HEADER, '11').type('application/json; charset=utf-8');
    return reply.send(JSON.stringify({ cniVersion: '1.1.0', code: 11, msg: 'the agent is waiting for this node\'s pod CIDR from the operator', details: 'cluster pool: see membrane status' }) + '\n');
  });
  app.setNotFoundHandler(async (_req, reply) => reply.status(503).send(waiting));
  return app;
}

export async function listenUnix(app: FastifyInstance, socket: string): Promise<void> {
  try {
    fs.unlinkSync(socket);
  } catch {
    /* not there */
  }
  const old = process.umask(0o177);
  try {
    await app.listen({ path: socket });
  } finally {
    process.umask(old);
  }
  fs.chmodSync(socket, 0o600);
}

/** Cluster pool: serve `membrane status` (waiting, and why) until the operator allocated this node's pod CIDR. */
export async function waitForPodCidr(cfg: AgentConfig, cluster: ClusterNode): Promise<string> {
  const started = Date.now();
  const api = buildWaitingApi(() => ({
    version: VERSION,
    node: cfg.nodeName,
    state: 'waiting-for-pod-cidr',
    uptimeSeconds: Math.round((Date.now() - started) / 1000),
    podCidr: null,
    cluster: cluster.status(),
  }));
  await listenUnix(api, cfg.socket);
  try {
    return await cluster.waitForPodCidr();
  } finally {
    await api.close();
  }
}

/** Refuse to start when another agent already answers on the socket. */
export async function assertSocketFree(sock: string): Promise<void> {
  if (!fs.existsSync(sock)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(sock);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`socket ${sock}: another agent is already serving on it`);
}
