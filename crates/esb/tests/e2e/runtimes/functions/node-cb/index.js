// CommonJS, callback style, as Node.js 18 functions were written.
const { S3Client } = require('@aws-sdk/client-s3');

exports.handler = function (event, context, callback) {
  const remaining = context.getRemainingTimeInMillis();
  // The answer waits for this timer: callbackWaitsForEmptyEventLoop is true by default.
  let late = false;
  setTimeout(() => { late = true; }, 50);
  callback(null, {
    node: process.versions.node,
    sdk: typeof S3Client,
    remaining,
    requestId: context.awsRequestId,
    functionName: context.functionName,
    arn: context.invokedFunctionArn,
    get late() { return late; },
  });
};
