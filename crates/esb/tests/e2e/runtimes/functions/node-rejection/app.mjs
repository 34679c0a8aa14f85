// A promise nobody awaits rejects while the handler is still running.
export const handler = async () => {
  Promise.reject(new Error('rejected on purpose'));
  await new Promise((resolve) => setTimeout(resolve, 200));
  return 'should not be the answer';
};
