#!/usr/bin/env node
// Entry point of the `partita` command: the compiled CLI lives in dist/ (npm run build).
// The CLI is bundled (esbuild, TypeBox included and tree-shaken) so start-up reads and compiles a few modules, not
// a hundred.
import('../dist/main.js').catch((e) => {
  if (e && e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('dist/main.js')) {
    console.error('partita: not built yet: run `npm ci` (or `npm run build`) in the Partita checkout');
    process.exit(2);
  }
  throw e;
});
