/**
 * The plugin as a runtime sees it: a directory holding `membrane-cni`. Here that
 * name is a tiny sh wrapper that records each call (command, container id, netns,
 * ifname, CNI_ARGS, whether stdin carried a prevResult, exit code) and runs the
 * real, unmodified bin/membrane-cni (linked next to it) with the same
 * environment and stdin, returning its stdout and exit code untouched.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CNI_BIN } from '../../helpers/node';

export interface CniTraceRecord {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  args: string;
  prevResult: boolean;
  exitCode: number;
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Put the plugin into binDir (created if needed); calls are appended to traceFile. */
export function installTracedPlugin(binDir: string, traceFile: string): void {
  fs.mkdirSync(binDir, { recursive: true });
  const real = path.join(binDir, '.membrane-cni.real');
  fs.rmSync(real, { force: true });
  fs.symlinkSync(CNI_BIN, real);
  const script = `#!/bin/sh
# Test wrapper: record the call, then run the real plugin with the same env and stdin.
in=$(cat)
case "$in" in *'"prevResult"'*) pr=1 ;; *) pr=0 ;; esac
out=$(printf '%s' "$in" | ${shQuote(real)})
rc=$?
printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$CNI_COMMAND" "\${CNI_CONTAINERID:-}" "\${CNI_NETNS:-}" "\${CNI_IFNAME:-}" "\${CNI_ARGS:-}" "$pr" "$rc" >> ${shQuote(traceFile)}
[ -n "$out" ] && printf '%s\\n' "$out"
exit $rc
`;
  fs.writeFileSync(path.join(binDir, 'membrane-cni'), script, { mode: 0o755 });
}

export function readTrace(traceFile: string): CniTraceRecord[] {
  let text = '';
  try {
    text = fs.readFileSync(traceFile, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const [command, containerId, netns, ifname, args, pr, rc] = l.split('\t');
      return { command, containerId, netns, ifname, args, prevResult: pr === '1', exitCode: Number(rc) };
    });
}

/** "IgnoreUnknown=1;K8S_POD_NAME=x" -> { IgnoreUnknown: '1', K8S_POD_NAME: 'x' } */
export function cniArgsMap(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of args.split(';')) {
    const i = p.indexOf('=');
    if (i > 0) out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

/** One line per call, for logs and the report. */
export function formatTrace(t: CniTraceRecord[]): string {
  return t.map((r) => `${r.command} cid=${r.containerId.slice(0, 12)} netns=${r.netns} if=${r.ifname} args=${r.args} prevResult=${r.prevResult} rc=${r.exitCode}`).join('\n');
}
