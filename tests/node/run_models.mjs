// Open and run ONNX models in onnxruntime-node or onnxruntime-web (wasm backend, in Node.js).
//
//   node run_models.mjs <node|web> <jobs.json>
//
// jobs.json: {"jobs": [{"model": "a.onnx", "out": "dir", "opens": 1, "runs": 1, "options": {}}, ...]}. For each
// job the model is opened `opens` times (session creation timed each time; `options` are extra session
// options, none by default) and the last session run `runs` times without inputs (each run timed); every
// output's raw bytes go to <out>/<index>.bin, and <out>/outputs.json lists name, type, dims and file per
// output plus the timings. opens or runs may be 0 (timing only; out may be omitted). With "decoder": a model
// that is first opened with optimisations off and run once, inside the timed open (the two-step form's
// decode; its outputs are not fed anywhere here). Prints one JSON line
// per job, with the resident set before the first session (rss_before_mb) and the process's peak so far.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [, , runtime, jobsFile] = process.argv;
let ort;
if (runtime === 'node') {
  ort = require('onnxruntime-node');
} else if (runtime === 'web') {
  ort = require('onnxruntime-web');
  ort.env.wasm.numThreads = 1;  // no worker threads: the same kernels, reproducible timing
} else {
  console.error('usage: node run_models.mjs <node|web> <jobs.json>');
  process.exit(2);
}
const jobs = JSON.parse(fs.readFileSync(jobsFile, 'utf8')).jobs;

for (const job of jobs) {
  const bytes = new Uint8Array(fs.readFileSync(job.model));
  const opens = job.opens ?? 1, runs = job.runs ?? 1;
  const open_s = [], run_s = [];
  const rss_before_mb = process.memoryUsage().rss / 2 ** 20;
  let session = null;
  for (let i = 0; i < opens; i++) {
    if (session) await session.release();
    const t0 = process.hrtime.bigint();
    if (job.decoder) {  // the two-step form: the decoder run once, optimisations off, before the model opens
      const dec = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(job.decoder)),
        { executionProviders: ['cpu'], graphOptimizationLevel: 'disabled' });
      await dec.run({});
      await dec.release();
    }
    session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], ...(job.options ?? {}) });
    open_s.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  const result = { model: job.model, runtime, open_s, run_s, rss_before_mb, rss_peak_mb: null, outputs: [] };
  let outs = null;
  for (let i = 0; i < runs && session; i++) {
    const t0 = process.hrtime.bigint();
    outs = await session.run({});
    run_s.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  if (outs && job.out) {
    fs.mkdirSync(job.out, { recursive: true });
    session.outputNames.forEach((name, i) => {
      const t = outs[name];
      const data = t.data;
      const file = `${i}.bin`;
      fs.writeFileSync(path.join(job.out, file), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      result.outputs.push({ name, type: t.type, dims: Array.from(t.dims), file });
    });
    fs.writeFileSync(path.join(job.out, 'outputs.json'), JSON.stringify(result));
  }
  if (session) await session.release();
  result.rss_peak_mb = process.resourceUsage().maxRSS / 1024;  // KiB -> MiB
  console.log(JSON.stringify({ ...result, outputs: result.outputs.length }));
}
