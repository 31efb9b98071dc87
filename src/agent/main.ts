/** membrane-agent: runs the node agent in the foreground. */
import { Agent } from './agent';
import { ConfigError, parseAgentArgs, usage } from './config';
import { log, setLogLevel } from '../util/log';
import { CleanupRefused, cleanupNode } from '../node/cleanup';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = parseAgentArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`membrane-agent: ${(e as Error).message}\n${e instanceof ConfigError ? '' : usage()}`);
    process.exit(2);
  }
  if (cfg === 'help') {
    process.stdout.write(usage());
    return;
  }
  setLogLevel(cfg.logLevel);
  if (cfg.cleanup) {
    try {
      const r = await cleanupNode(cfg);
      process.stdout.write(r.removed.length ? r.removed.map((x) => `removed ${x}\n`).join('') : 'nothing to remove\n');
      for (const e of r.errors) process.stderr.write(`membrane-agent: cleanup: ${e}\n`);
      process.exit(r.errors.length ? 1 : 0);
    } catch (e) {
      process.stderr.write(`membrane-agent: cleanup: ${(e as Error).message}\n`);
      process.exit(e instanceof CleanupRefused ? 3 : 1);
    }
  }
  let agent: Agent;
  try {
    agent = await Agent.start(cfg, log);
  } catch (e) {
    log.error('agent failed to start', { error: e });
    process.exit(1);
  }
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down', { signal: sig });
    agent.stop().then(
      () => process.exit(0),
      (e) => {
        log.error('shutdown failed', { error: e });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

void main();
