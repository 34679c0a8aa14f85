// Fails while the module loads, before any invocation.
const config = JSON.parse(process.env.MISSING_CONFIG ?? 'null');
if (config === null) {
  throw new Error('init failed on purpose: MISSING_CONFIG is not set');
}
export const handler = async () => 'never reached';
