// An ES module, async, using the SDK the Node.js runtime provides (nothing bundled).
import { DynamoDBClient, PutItemCommand, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { S3Client, PutObjectCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { LambdaClient, InvokeCommand } from '@aws-sdk/client-lambda';
import greeting from 'esb-greeting';

const ddb = new DynamoDBClient({});
const s3 = new S3Client({});
const lambda = new LambdaClient({});

export const handler = async (event, context) => {
  const id = context.awsRequestId;
  await ddb.send(new PutItemCommand({
    TableName: process.env.TABLE,
    Item: { id: { S: id }, answer: { N: '42' } },
  }));
  const item = await ddb.send(new GetItemCommand({ TableName: process.env.TABLE, Key: { id: { S: id } } }));
  const key = `node/${id}.txt`;
  await s3.send(new PutObjectCommand({ Bucket: process.env.BUCKET, Key: key, Body: 'hello from node' }));
  const obj = await s3.send(new GetObjectCommand({ Bucket: process.env.BUCKET, Key: key }));
  const text = await obj.Body.transformToString();
  const answer = await lambda.send(new InvokeCommand({
    FunctionName: 'py313',
    Payload: JSON.stringify({ from: 'node-esm' }),
  }));
  const python = JSON.parse(Buffer.from(answer.Payload).toString('utf8'));
  console.log('node-esm done', id);
  return {
    node: process.versions.node,
    greeting: greeting.greet('esm'),
    answer: item.Item.answer.N,
    text,
    key,
    trace: process.env._X_AMZN_TRACE_ID,
    python,
    event,
  };
};
