// Bundle the `membrane ui` front end (ui/) into dist/ui: main.js (with cytoscape),
// main.css and index.html. Served by src/ui/server.ts. The sources are type-checked
// first (ui/tsconfig.json: DOM types, no emit), so a type error fails the build.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const root = path.resolve(__dirname, '..');
const src = path.join(root, 'ui');
const out = path.join(root, 'dist/ui');

try {
  execFileSync(path.join(root, 'node_modules/.bin/tsc'), ['-p', path.join(src, 'tsconfig.json')], { stdio: 'inherit' });
} catch {
  console.error('bundle-ui: type errors in ui/ (above)');
  process.exit(1);
}

fs.mkdirSync(out, { recursive: true });
require('esbuild').buildSync({
  entryPoints: [path.join(src, 'main.ts')],
  bundle: true,
  platform: 'browser',
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  minify: true,
  sourcemap: true,
  outdir: out,
  logLevel: 'error',
  legalComments: 'linked',
});
for (const f of ['index.html', 'favicon.svg']) fs.copyFileSync(path.join(src, f), path.join(out, f));
