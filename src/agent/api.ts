/**
 * The agent's REST API (basePath /v1) on a Unix socket, owner-only (0600).
 * Every request body is validated against a JSON schema; a bad body gets a 400
 * naming the field. Paths and shapes follow the reference system's API.
 */
import * as fs from 'node:fs';
import Fastify, { FastifyError, FastifyInstance } from 'fastify';
import type { Agent } from './agent';
import { MAP_NAMES, dumpMap, dumpPolicyMap, flushConntrack } from '../datapath/dump';
import { PolicyTraceError } from '../policy/trace';
import { EndpointError } from '../endpoint/manager';
import { ResourceValidationError, kindInfo, KINDS } from '../store/kinds';
import { FilterError, parseFlowQuery } from '../monitor/filter';
import { OBSERVATION_SHORT } from '../monitor/events';

const attachment = {
  type: 'object',
  required: ['containerId', 'ifname'],
  additionalProperties: false,
  properties: {
    containerId: { type: 'string', minLength: 1, maxLength: 256 },
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: '^[^/\\s:]+$' },
  },
} as const;

const createBody = {
  type: 'object',
  required: ['containerId', 'ifname', 'netns'],
  additionalProperties: false,
  properties: {
    containerId: { type: 'string', minLength: 1, maxLength: 256 },
    ifname: { type: 'string', minLength: 1, maxLength: 15, pattern: '^[^/\\s:]+$' },
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
    containerId: { type: 'string', minLength: 1 },
    ifname: { type: 'string', minLength: 1 },
    netns: { type: 'string' },
  },
} as const;

const gcBody = {
  type: 'object',
  required: ['validAttachments'],
  additionalProperties: false,
  properties: { validAttachments: { type: 'array', items: attachment } },
} as const;

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
  const app = Fastify({ logger: false, bodyLimit: 8 * 1024 * 1024 });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err instanceof ResourceValidationError) {
      return reply.status(400).send({ error: err.message, kind: 'invalid', details: err.problems });
    }
    if (err instanceof EndpointError) {
      return reply.status(STATUS_OF[err.kind]).send({ error: err.message, kind: err.kind });
    }
    if (err.validation) {
      const where = err.validationContext ?? 'body';
      const details = err.validation.map((v) => {
        const field = (v.instancePath || '').replace(/^\//, '').replace(/\//g, '.');
        const extra = (v.params as Record<string, unknown>)?.missingProperty ?? (v.params as Record<string, unknown>)?.additionalProperty;
        const name = [field, extra].filter(Boolean).join('.');
        return `${where}${name ? '.' + name : ''}: ${v.message}`;
      });
      return reply.status(400).send({ error: `invalid request: ${details.join('; ')}`, kind: 'invalid', details });
    }
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) agent.log.error('API request failed', { method: req.method, url: req.url, error: err });
    return reply.status(status).send({ error: err.message, kind: status >= 500 ? 'internal' : 'invalid' });
  });

  app.addHook('onResponse', async (req, reply) => {
    agent.recordApiLatency(req.method, req.routeOptions.url ?? req.url, reply.statusCode, reply.elapsedTime);
  });

  app.get('/v1/healthz', async () => ({ status: 'ok' }));
  app.get('/v1/status', async () => agent.status());

  app.get('/v1/endpoint', async () => agent.endpoints.list());
  app.get<{ Params: { id: string } }>('/v1/endpoint/:id', async (req, reply) => {
    const ep = agent.endpoints.get(Number(req.params.id));
    if (!ep) return reply.status(404).send({ error: `endpoint ${req.params.id} not found`, kind: 'not-found' });
    return ep;
  });
  app.put('/v1/endpoint', { schema: { body: createBody } }, async (req, reply) => {
    const t0 = process.hrtime.bigint();
    const ep = await agent.endpoints.create(req.body as any);
    const durationMs = Number(process.hrtime.bigint() - t0) / 1e6;
    return reply.status(201).send({ endpoint: ep, router: agent.routerAddress(), durationMs });
  });
  app.delete('/v1/endpoint', { schema: { body: attachment } }, async (req) => {
    const b = req.body as { containerId: string; ifname: string };
    return agent.endpoints.delete(b.containerId, b.ifname);
  });
  app.post('/v1/endpoint/check', { schema: { body: checkBody } }, async (req) => {
    const b = req.body as { containerId: string; ifname: string; netns?: string };
    const problems = agent.endpoints.check(b.containerId, b.ifname, b.netns);
    return { ok: problems.length === 0, problems };
  });
  app.post('/v1/gc', { schema: { body: gcBody } }, async (req) => {
    return agent.endpoints.gc((req.body as { validAttachments: { containerId: string; ifname: string }[] }).validAttachments);
  });

  app.get('/v1/identity', async () => agent.endpoints.identities.list());
  app.get<{ Params: { id: string } }>('/v1/identity/:id', async (req, reply) => {
    const ident = agent.endpoints.identities.get(Number(req.params.id));
    if (!ident) return reply.status(404).send({ error: `identity ${req.params.id} not found`, kind: 'not-found' });
    return ident;
  });
  app.get('/v1/ipam', async () => ({ cidr: agent.cfg.podCidr, router: agent.routerAddress(), allocations: agent.endpoints.ipam.list() }));

  app.get('/v1/service', async () => agent.services.frontends.map(serviceView));
  app.get<{ Params: { id: string } }>('/v1/service/:id', async (req, reply) => {
    const f = agent.services.frontends.find((x) => String(x.revNat) === req.params.id);
    if (!f) return reply.status(404).send({ error: `service frontend ${req.params.id} not found`, kind: 'not-found' });
    return serviceView(f);
  });

  app.delete<{ Querystring: { services?: string } }>('/v1/map/mb_ct', async (req) => ({ deleted: flushConntrack(agent.dp, req.query.services === '1') }));

  app.get('/v1/map', async () => MAP_NAMES);
  app.get<{ Params: { name: string } }>('/v1/map/:name', async (req, reply) => {
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
    },
  } as const;

  const normaliseRefs = (refs: { kind: string; namespace?: string; name: string }[]) =>
    refs.map((r, i) => {
      const info = kindInfo(r.kind);
      if (!info) throw Object.assign(new Error(`refs[${i}].kind: "${r.kind}" is not a known kind (${KINDS.map((k) => k.kind).join(', ')})`), { statusCode: 400 });
      return { kind: info.kind, name: r.name, namespace: info.namespaced ? r.namespace || 'default' : undefined };
    });

  // Observability: Prometheus metrics, flows, the raw event stream.
  app.get('/v1/metrics', async (req, reply) => {
    reply.header('content-type', agent.metrics.contentType);
    return agent.metrics.text();
  });

  /** NDJSON: stored flows matching the filters, then (follow=1) every new one until the client goes away. */
  app.get('/v1/flows', async (req, reply) => {
    let q;
    try {
      q = parseFlowQuery(new URLSearchParams(req.url.split('?')[1] ?? ''));
    } catch (e) {
      if (e instanceof FilterError) return reply.status(400).send({ error: e.message, kind: 'invalid' });
      throw e;
    }
    const stored = agent.monitor.query(q);
    if (!q.follow) {
      reply.header('content-type', 'application/x-ndjson');
      return stored.map((f) => JSON.stringify(f)).join('\n') + (stored.length ? '\n' : '');
    }
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    for (const f of stored) res.write(JSON.stringify(f) + '\n');
    const unsubscribe = agent.monitor.subscribeFlows({ ...q, last: undefined }, (f) => res.write(JSON.stringify(f) + '\n'));
    req.raw.on('close', unsubscribe);
    res.on('close', unsubscribe);
  });

  /** NDJSON stream of decoded events ({event, flow}) for `membrane monitor`. */
  app.get<{ Querystring: { type?: string | string[]; related_to?: string } }>('/v1/monitor', async (req, reply) => {
    const types = ([] as string[]).concat(req.query.type ?? []).flatMap((t) => t.split(','));
    for (const t of types) {
      if (!['drop', 'trace', 'policy-verdict'].includes(t)) return reply.status(400).send({ error: `type: "${t}" is not drop, trace or policy-verdict`, kind: 'invalid' });
    }
    const related = req.query.related_to !== undefined ? Number(req.query.related_to) : undefined;
    if (related !== undefined && !Number.isInteger(related)) return reply.status(400).send({ error: `related_to: "${req.query.related_to}" is not an endpoint id`, kind: 'invalid' });
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' });
    const unsubscribe = agent.monitor.subscribeEvents((ev, flow) => {
      if (types.length && !types.includes(ev.type)) return;
      if (related !== undefined && ev.source !== related && flow.source.ID !== related && flow.destination.ID !== related) return;
      const { data, ...rest } = ev;
      res.write(JSON.stringify({ event: { ...rest, data: data.toString('hex'), point: ev.type === 'trace' ? OBSERVATION_SHORT[ev.obsPoint] : undefined }, flow }) + '\n');
    });
    req.raw.on('close', unsubscribe);
    res.on('close', unsubscribe);
  });

  // Resources in Kubernetes shapes: apply (all or nothing), get, delete.
  app.post('/v1/apply', { schema: { body: objectsBody } }, async (req) => agent.apply((req.body as { objects: unknown[] }).objects));
  app.post('/v1/delete', { schema: { body: refsBody } }, async (req) => agent.deleteResources(normaliseRefs((req.body as any).refs)));
  app.get<{ Params: { kind: string }; Querystring: { namespace?: string; name?: string } }>('/v1/resources/:kind', async (req, reply) => {
    const info = kindInfo(req.params.kind);
    if (!info) return reply.status(404).send({ error: `unknown kind "${req.params.kind}" (${KINDS.map((k) => k.kind).join(', ')})`, kind: 'not-found' });
    const ns = info.namespaced ? req.query.namespace : undefined;
    if (req.query.name) {
      const o = agent.store.get({ kind: info.kind, namespace: info.namespaced ? ns || 'default' : undefined, name: req.query.name });
      if (!o) return reply.status(404).send({ error: `${info.kind} ${ns ? ns + '/' : ''}${req.query.name} not found`, kind: 'not-found' });
      return [o];
    }
    return agent.store.list(info.kind, ns);
  });

  // Policy.
  app.get('/v1/policy', async () => ({ revision: agent.policy.revision, policies: agent.policy.repo.objects() }));
  app.put('/v1/policy', { schema: { body: objectsBody } }, async (req) => {
    const objects = (req.body as { objects: any[] }).objects;
    objects.forEach((o, i) => {
      if (!['NetworkPolicy', 'CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy'].includes(o?.kind)) {
        throw Object.assign(new Error(`objects[${i}].kind: ${JSON.stringify(o?.kind)} is not a policy kind`), { statusCode: 400 });
      }
    });
    return agent.apply(objects);
  });
  app.delete('/v1/policy', { schema: { body: { type: 'object', additionalProperties: false, properties: { all: { type: 'boolean' }, refs: refsBody.properties.refs } } } }, async (req) => {
    const b = req.body as { all?: boolean; refs?: { kind: string; namespace?: string; name: string }[] };
    const refs = b.all
      ? agent.policy.repo.objects().map((o) => ({ kind: o.kind, namespace: o.metadata.namespace, name: o.metadata.name }))
      : normaliseRefs(b.refs ?? []);
    return agent.deleteResources(refs);
  });
  app.get<{ Params: { revision: string }; Querystring: { timeout?: string } }>('/v1/policy/wait/:revision', async (req, reply) => {
    const rev = Number(req.params.revision);
    const timeoutS = Number(req.query.timeout ?? 30);
    if (!Number.isInteger(rev) || rev < 0) return reply.status(400).send({ error: `revision: "${req.params.revision}" is not a revision number`, kind: 'invalid' });
    const ok = await agent.changes.waitForRevision(rev, Math.max(0, Math.min(timeoutS, 600)) * 1000);
    if (!ok) return reply.status(504).send({ error: `timed out after ${timeoutS}s waiting for every endpoint to reach policy revision ${rev}`, kind: 'timeout' });
    return { revision: rev, reached: true };
  });
  app.post('/v1/policy/trace', { schema: { body: traceBody } }, async (req, reply) => {
    const b = req.body as { src: string; dst: string; dport: number; protocol?: string };
    try {
      return agent.tracer.trace({ ...b, protocol: b.protocol ?? 'TCP' });
    } catch (e) {
      if (e instanceof PolicyTraceError) return reply.status(400).send({ error: e.message, kind: 'invalid', field: e.field });
      throw e;
    }
  });
  app.get('/v1/policy/selectors', async () => agent.policy.cache.list());
  app.get<{ Params: { id: string } }>('/v1/endpoint/:id/policy', async (req, reply) => {
    const ep = agent.endpoints.get(Number(req.params.id));
    const entries = ep && dumpPolicyMap(agent.dp, ep.id, agent.identities);
    if (!ep || !entries) return reply.status(404).send({ error: `endpoint ${req.params.id} not found`, kind: 'not-found' });
    return { endpoint: ep.id, identity: ep.identity, revision: ep.policy.revision, entries };
  });

  return app;
}

/** Serve the API on a Unix socket created owner-only (no window with wider access). */
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
