// The two-step form in onnxruntime-node or onnxruntime-web (wasm, in Node.js), as an app would use it:
// run the decoder once with graph optimisations off, then feed its outputs (the weights, by name) to the
// network next to the data inputs. Also runs the plain export on the same inputs, for comparison.
//
//   node two_step.mjs <node|web> <weights.onnx> <network.onnx> <plain.onnx> <inputs.json> <outdir>
//
// inputs.json: [{"name", "dtype" (float32 | bool), "dims", "file" (raw little-endian bytes)}, ...].
// Writes <outdir>/two_step.bin and <outdir>/plain.bin (first output, raw float32) and prints the timings.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [, , runtime, weightsPath, networkPath, plainPath, inputsJson, outDir] = process.argv;
const ort = require(runtime === 'web' ? 'onnxruntime-web' : 'onnxruntime-node');
if (runtime === 'web') ort.env.wasm.numThreads = 1;

const feeds = {};
for (const { name, dtype, dims, file } of JSON.parse(fs.readFileSync(inputsJson, 'utf8'))) {
  const raw = fs.readFileSync(file);
  const data = dtype === 'bool' ? Uint8Array.from(raw)
    : new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  feeds[name] = new ort.Tensor(dtype, data, dims);
}
const seconds = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;
const first = async (session, inputs) => {
  const outs = await session.run(inputs);
  const t = outs[session.outputNames[0]];
  return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
};

fs.mkdirSync(outDir, { recursive: true });
let t0 = process.hrtime.bigint();
const decoder = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(weightsPath)),
  { executionProviders: ['cpu'], graphOptimizationLevel: 'disabled' });
const weights = await decoder.run({});
await decoder.release();
const network = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(networkPath)), { executionProviders: ['cpu'] });
const open_s = seconds(t0);
fs.writeFileSync(path.join(outDir, 'two_step.bin'), await first(network, { ...weights, ...feeds }));
t0 = process.hrtime.bigint();
const plain = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(plainPath)), { executionProviders: ['cpu'] });
const plain_open_s = seconds(t0);
fs.writeFileSync(path.join(outDir, 'plain.bin'), await first(plain, feeds));
console.log(JSON.stringify({ runtime, open_s, plain_open_s }));
