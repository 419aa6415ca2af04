#!/usr/bin/env node
// Entry point of the `partita` command: the compiled CLI lives in dist/ (npm run build).
// The CLI is bundled (esbuild) so start-up reads and compiles a few modules, not a hundred; the spec validator is
// a chunk of its own, loaded only when a spec file is read.
import('../dist/main.js').catch((e) => {
  if (e && e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('dist/main.js')) {
    console.error('partita: not built yet: run `npm ci` (or `npm run build`) in the Partita checkout');
    process.exit(2);
  }
  throw e;
});
