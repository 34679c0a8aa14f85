// No layer: the SDK import resolves through the base's /var/node_modules alone.
import { S3Client } from '@aws-sdk/client-s3';

// A promise nobody awaits rejects while the handler is still running.
export const handler = async () => {
  Promise.reject(new Error('rejected on purpose'));
  await new Promise((resolve) => setTimeout(resolve, 200));
  return `should not be the answer (${typeof S3Client})`;
};
