/** membrane-operator: the cluster's operator, in the foreground. */
import { log, setLogLevel } from '../util/log';
import { OPERATOR_USAGE, OperatorConfigError, parseOperatorArgs } from './config';
import { Operator } from './operator';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = parseOperatorArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`membrane-operator: ${(e as Error).message}\n${e instanceof OperatorConfigError ? '' : OPERATOR_USAGE}`);
    process.exit(2);
  }
  if (cfg === 'help') {
    process.stdout.write(OPERATOR_USAGE);
    return;
  }
  setLogLevel(cfg.logLevel);
  const op = new Operator(cfg, log.child({ component: 'operator' }));
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info('operator shutting down', { signal: sig, leader: op.election.isLeader });
    op.stop().then(
      () => process.exit(0),
      (e) => {
        log.error('shutdown failed', { error: e });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // SIGUSR1: the operator's status as one log line.
  process.on('SIGUSR1', () => log.info('operator status', op.status()));
  try {
    await op.start();
  } catch (e) {
    log.error('operator failed to start', { error: e });
    process.exit(1);
  }
}

void main();
