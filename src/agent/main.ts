/** membrane-agent: runs the node agent in the foreground. */
import { Agent } from './agent';
import { ConfigError, parseAgentArgs, usage } from './config';
import { log, setLogLevel } from '../util/log';

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
