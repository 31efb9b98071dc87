/**
 * The summary table of one bench/run-all.sh run: every row the benches
 * reported (bench/lib.ts reportRow) with its figure, the reference measured
 * in the same run, the target and meets/misses. The rows of issue 15 come
 * first, in the issue's order; one that no bench reported in this run is
 * listed as not measured, so a missing figure cannot pass unnoticed. Rows of
 * other issues follow in the order they were reported.
 *
 *   node dist/bench/summary.js ROWS_FILE
 */
import * as fs from 'node:fs';
import { BenchRow, rowsTable, table } from './lib';

/** Issue 15's table, in its order, and the bench that measures each row. */
const ISSUE_15: { row: string; bench: string }[] = [
  { row: 'CNI ADD, plugin exec p50, sequential', bench: 'cni-add-latency' },
  { row: 'CNI ADD, agent side p50', bench: 'cni-add-latency' },
  { row: '10 ADDs at once, plugin exec p50', bench: 'cni-add-latency' },
  { row: '1,000 pods attached (policy-scale bench)', bench: 'policy-scale' },
  { row: 'pod-to-pod TCP RR vs a plain veth pair between two namespaces (no routing)', bench: 'pod-to-pod' },
  { row: 'ClusterIP / direct new connections, 1 service', bench: 'services' },
  { row: 'ClusterIP / direct new connections, 10,000 services', bench: 'services' },
  { row: 'flow events the agent ingests on one core', bench: 'observe-cost' },
  { row: 'flow events the agent ingests on one core: events lost at 100,000/s offered', bench: 'observe-cost' },
  { row: 'flow events the agent ingests on one core: API p99 during the maximum flood', bench: 'observe-cost' },
  { row: 'agent memory per endpoint (1,000 endpoints, 500 rules)', bench: 'policy-scale' },
];

function main(): void {
  const file = process.argv[2];
  if (!file) throw new Error('usage: summary.js ROWS_FILE');
  const rows: BenchRow[] = [];
  if (fs.existsSync(file)) {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        rows.push(JSON.parse(line));
      } catch {
        process.stderr.write(`summary: skipping a line that is not JSON: ${line.slice(0, 80)}\n`);
      }
    }
  }
  // A row reported twice (a bench run twice) keeps its last figure.
  const last = new Map<string, BenchRow>();
  for (const r of rows) last.set(r.row, r);
  const known = new Set(ISSUE_15.map((r) => r.row));
  const issueRows = ISSUE_15.filter((r) => last.has(r.row)).map((r) => last.get(r.row)!);
  const missing = ISSUE_15.filter((r) => !last.has(r.row));
  const others = [...last.values()].filter((r) => !known.has(r.row));

  console.log('=== summary: issue 15');
  console.log(rowsTable(issueRows));
  if (missing.length) {
    console.log('');
    console.log(table([['not measured in this run', 'bench'], ...missing.map((m) => [m.row, m.bench])]));
  }
  if (others.length) {
    console.log('');
    console.log('=== other rows');
    console.log(rowsTable(others));
  }
  const judged = [...issueRows, ...others].filter((r) => r.meets !== undefined);
  const misses = judged.filter((r) => !r.meets).length;
  console.log('');
  console.log(`${judged.length - misses} of ${judged.length} judged rows meet their target; ${missing.length} issue-15 rows not measured in this run`);
}

main();
