// Module resolution hook of esb's Node.js runtime client (registered by ric.mjs): a bare
// import that Node.js cannot resolve from the importing file is tried again from each
// `node_modules` directory of NODE_PATH, so ES modules find the runtime's AWS SDK
// (/var/runtime/node_modules) and layers' packages (/opt/nodejs/...) as CommonJS does.

import { pathToFileURL } from 'node:url';

const FALLBACKS = (process.env.NODE_PATH || '')
  .split(':')
  .filter((d) => d.endsWith('/node_modules'))
  .map((d) => pathToFileURL(`${d.slice(0, -'node_modules'.length)}esb-resolve.mjs`).href);

function isBare(specifier) {
  return !/^(\.{0,2}\/|[a-zA-Z][a-zA-Z0-9+.-]*:)/.test(specifier);
}

export async function resolve(specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context);
  } catch (err) {
    if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !isBare(specifier)) throw err;
    for (const parentURL of FALLBACKS) {
      try {
        return await nextResolve(specifier, { ...context, parentURL });
      } catch {
        // try the next directory
      }
    }
    throw err;
  }
}
