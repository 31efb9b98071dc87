// Bundle the CNI plugin into one self-contained file, bin/membrane-cni: it can be
// copied or linked into a runtime's plugin directory and needs only node.
'use strict';
const path = require('path');
const root = path.resolve(__dirname, '..');
require('esbuild').buildSync({
  entryPoints: [path.join(root, 'src/cni/main.ts')],
  bundle: true,
  platform: 'node',
  target: 'node20',
  outfile: path.join(root, 'bin/membrane-cni'),
  logLevel: 'error',
  banner: {
    // The runtime's NODE_OPTIONS and NODE_EXTRA_CA_CERTS are dropped: the plugin
    // needs neither, and they slow every start.
    js: '#!/usr/bin/env -S -u NODE_OPTIONS -u NODE_EXTRA_CA_CERTS node\n// membrane-cni: the CNI 1.1 plugin of Membrane, bundled from src/cni (see README.md).',
  },
});
