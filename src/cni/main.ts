/** Entry point of bin/membrane-cni (bundled into one file by scripts/build.sh). */
import * as fs from 'node:fs';
import { run } from './plugin';

function readStdin(): string {
  try {
    return fs.readFileSync(0, 'utf8');
  } catch {
    return '';
  }
}

run({ env: process.env, stdin: readStdin() }).then(
  (out) => {
    if (out.stdout) process.stdout.write(out.stdout + '\n');
    process.exitCode = out.exitCode;
  },
  (e) => {
    process.stdout.write(JSON.stringify({ cniVersion: '1.1.0', code: 999, msg: String(e?.message ?? e) }) + '\n');
    process.exitCode = 1;
  },
);
