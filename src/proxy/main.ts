/**
 * membrane-proxy: the L7 proxy process. Started and supervised by the agent;
 * runs in the foreground until SIGTERM/SIGINT.
 *   --dir DIR         its directory (control socket, configuration, pid file)
 *   --bpf-root DIR    the agent's bpf root (pinned maps, opened read-only)
 *   --log-level LEVEL debug|info|warn|error (info)
 */
import { parseArgs } from 'node:util';
import { log, setLogLevel, Level } from '../util/log';
import { Proxy } from './proxy';

const USAGE = `Usage: membrane-proxy --dir DIR --bpf-root DIR [--log-level LEVEL]
  --dir DIR          the proxy's directory: control.sock (owner-only), config.json, proxy.pid
  --bpf-root DIR     the agent's bpf root; the datapath's maps are read from there (read-only)
  --log-level LEVEL  debug|info|warn|error (info); structured JSON logs on stderr
The agent starts, configures and supervises the proxy (membrane-agent); run it by hand only to debug.
`;

async function main(): Promise<void> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: process.argv.slice(2),
      options: { dir: { type: 'string' }, 'bpf-root': { type: 'string' }, 'log-level': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }).values;
  } catch (e) {
    process.stderr.write(`membrane-proxy: ${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  for (const f of ['dir', 'bpf-root']) {
    if (typeof values[f] !== 'string' || !values[f]) {
      process.stderr.write(`membrane-proxy: --${f} is required\n${USAGE}`);
      process.exit(2);
    }
  }
  const level = (values['log-level'] as string | undefined) ?? 'info';
  if (!['debug', 'info', 'warn', 'error'].includes(level)) {
    process.stderr.write(`membrane-proxy: --log-level: "${level}" is not debug, info, warn or error\n`);
    process.exit(2);
  }
  setLogLevel(level as Level);
  const plog = log.child({ component: 'proxy' });
  let proxy: Proxy;
  try {
    proxy = await Proxy.start({ dir: values.dir as string, bpfRoot: values['bpf-root'] as string, log: plog });
  } catch (e) {
    plog.error('proxy failed to start', { error: e });
    process.exit(1);
  }
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    plog.info('shutting down', { signal: sig });
    proxy.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // The agent may be gone: a broken pipe on stdout/stderr must not take the proxy down.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});
}

void main();
