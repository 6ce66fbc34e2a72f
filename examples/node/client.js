// Calls lstm-serve's lstm.v1 API from Node.js: ListModels, DescribeModel, Predict with raw
// little-endian float32 bytes and with `values`, a server-held sequence over one
// PredictStream, and, given a text model, one request of token ids. The .proto files are read
// at run time from this repository's proto/ folder.
//
//   npm ci && node client.js [HOST:PORT] [MODEL] [TEXT_MODEL]   (default localhost:50051 seed)
//
// Prints one JSON object with what each call returned (the test suite compares it with the
// Python client's answers).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'lstm', 'v1', 'lstm.proto');
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, // field names as in the .proto (last_hidden, not lastHidden)
  longs: Number, // int64 versions and shapes as numbers
  enums: String,
  defaults: true,
  oneofs: true,
});
const lstm = grpc.loadPackageDefinition(definition).lstm.v1;

// A float32 tensor as raw little-endian bytes (the fast path) ...
function rawTensor(shape, numbers) {
  const bytes = Buffer.alloc(numbers.length * 4);
  numbers.forEach((x, i) => bytes.writeFloatLE(x, i * 4));
  return {shape, data: bytes};
}

// ... and back: every response tensor uses `data`.
function fromTensor(tensor) {
  const out = [];
  for (let i = 0; i < tensor.data.length; i += 4) out.push(tensor.data.readFloatLE(i));
  return {shape: tensor.shape, values: out};
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, {deadline: Date.now() + 10000}, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

// One server-held sequence: each chunk is a step on one stream; the last ends it.
function sequence(client, model, id, chunks) {
  return new Promise((resolve, reject) => {
    const stream = client.PredictStream({deadline: Date.now() + 10000});
    const answers = [];
    stream.on('data', (response) => answers.push(fromTensor(response.last_hidden)));
    stream.on('error', reject);
    stream.on('end', () => resolve(answers));
    chunks.forEach((chunk, i) => {
      stream.write({
        model,
        input: rawTensor([1, chunk.length / 2, 2], chunk),
        output: 'LAST_HIDDEN',
        sequence: {text: id, start: i === 0, end: i === chunks.length - 1},
      });
    });
    stream.end();
  });
}

async function main() {
  const target = process.argv[2] || 'localhost:50051';
  const model = process.argv[3] || 'seed';
  const textModel = process.argv[4];
  const client = new lstm.LstmService(target, grpc.credentials.createInsecure());
  const x = Array.from({length: 2 * 3 * 2}, (_, i) => (i % 7) / 7); // [2, 3, 2]
  const listed = await call(client, 'ListModels', {});
  const described = await call(client, 'DescribeModel', {model});
  const raw = await call(client, 'Predict', {model, input: rawTensor([2, 3, 2], x), lengths: [3, 2]});
  const values = await call(client, 'Predict', {model, input: {shape: [2, 3, 2], values: x}, lengths: [3, 2]});
  const steps = await sequence(client, model, 'node-1', [x.slice(0, 4), x.slice(4, 6)]);
  let refused = null;
  try {
    await call(client, 'Predict', {model, input: {shape: [1, 3, 5], values: Array(15).fill(0)}});
  } catch (err) {
    refused = {code: grpc.status[err.code], details: err.details};
  }
  let tokens = null;
  if (textModel) { // token ids for a text model: `tokens` in place of `input`
    const ids = {shape: [1, 4], values: [3, 7, 1, 12]};
    tokens = fromTensor((await call(client, 'Predict', {model: textModel, tokens: ids})).prediction);
  }
  client.close();
  console.log(JSON.stringify({
    models: listed.models.map((m) => ({name: m.name, versions: m.versions})),
    layers: described.layers.map((l) => l.units),
    raw: fromTensor(raw.last_hidden),
    values: fromTensor(values.last_hidden),
    sequence: steps,
    refused,
    tokens,
  }));
}

main().catch((err) => {
  console.error(`lstm-serve call failed: ${err.message}`);
  process.exit(1);
});
