// The two-step form in onnxruntime-node or onnxruntime-web (wasm, in Node.js), as an app would use it:
// run the decoder once with graph optimisations off, then feed its outputs (the weights, by name) to the
// network next to the data input. Also runs the plain export on the same input, for comparison.
//
//   node two_step.mjs <node|web> <weights.onnx> <network.onnx> <plain.onnx> <input.bin> <dims json> <outdir>
//
// Writes <outdir>/two_step.bin and <outdir>/plain.bin (first output, raw float32) and prints the timings.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [, , runtime, weightsPath, networkPath, plainPath, inputPath, dimsJson, outDir] = process.argv;
const ort = require(runtime === 'web' ? 'onnxruntime-web' : 'onnxruntime-node');
if (runtime === 'web') ort.env.wasm.numThreads = 1;

const raw = fs.readFileSync(inputPath);
const x = new ort.Tensor('float32', new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4), JSON.parse(dimsJson));
const seconds = (t0) => Number(process.hrtime.bigint() - t0) / 1e9;
const first = async (session, feeds) => {
  const outs = await session.run(feeds);
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
const dataInput = network.inputNames.find((n) => !(n in weights));
fs.writeFileSync(path.join(outDir, 'two_step.bin'), await first(network, { ...weights, [dataInput]: x }));
t0 = process.hrtime.bigint();
const plain = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(plainPath)), { executionProviders: ['cpu'] });
const plain_open_s = seconds(t0);
fs.writeFileSync(path.join(outDir, 'plain.bin'), await first(plain, { [plain.inputNames[0]]: x }));
console.log(JSON.stringify({ runtime, open_s, plain_open_s }));
