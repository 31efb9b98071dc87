/**
 * The agent's side of the CNI plugin: the commands of src/cni/plugin.ts run
 * directly against the endpoint manager (no HTTP hop inside the agent), and
 * one CNI invocation forwarded by bin/membrane-cni becomes one answer.
 */
import type { EndpointManager } from '../endpoint/manager';
import type { Logger } from '../util/log';
import { CNI_ENV, CniBackend, Invocation, Outcome, run } from './plugin';

export function endpointBackend(endpoints: EndpointManager, router: () => string): CniBackend {
  return {
    async add(req) {
      const ep = await endpoints.create(req);
      return { endpoint: ep, router: router() };
    },
    async del(containerId, ifname) {
      // Best effort, as the spec asks: what could not be removed is logged by the manager, DEL succeeds.
      await endpoints.delete(containerId, ifname);
    },
    async check(containerId, ifname, netns) {
      return endpoints.check(containerId, ifname, netns);
    },
    async status() {
      // The agent answers only once its datapath is set up: serving this request is the readiness.
    },
    async gc(valid) {
      return endpoints.gc(valid);
    },
  };
}

/** The body bin/membrane-cni sends: the CNI variables it was given and its stdin. */
export interface CniRequest {
  env: Partial<Record<(typeof CNI_ENV)[number], string>>;
  stdin: string;
}

/** Run one forwarded invocation; failures are logged with their CNI code. */
export async function serveCni(req: CniRequest, backend: CniBackend, log: Logger): Promise<Outcome> {
  const inv: Invocation = { env: req.env, stdin: req.stdin };
  const out = await run(inv, backend);
  if (out.exitCode !== 0) {
    log.info('CNI request failed', { command: req.env.CNI_COMMAND, containerId: req.env.CNI_CONTAINERID, ifname: req.env.CNI_IFNAME, code: out.code, answer: out.stdout });
  }
  return out;
}
