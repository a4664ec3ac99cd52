// Run llama.cpp (npm's node-llama-cpp prebuilt CPU library) on a GGUF file; print one JSON line.
// node llama_cpp_probe.mjs logits FILE '[ids]' THREADS        -> next-token logits after the ids
// node llama_cpp_probe.mjs tokenize FILE TEXT                  -> llama.cpp's token ids for TEXT
// node llama_cpp_probe.mjs bench FILE PROMPT_LEN DECODE_LEN CTX THREADS [fa] -> tokens/s and KV bytes
// NODE_LLAMA_CPP_DIR names the folder whose node_modules holds node-llama-cpp.
import { pathToFileURL } from "node:url";
import path from "node:path";

const dir = process.env.NODE_LLAMA_CPP_DIR;
const { getLlama, LlamaLogLevel } = await import(
  pathToFileURL(path.join(dir, "node_modules", "node-llama-cpp", "dist", "index.js")).href
);
const [mode, file, ...rest] = process.argv.slice(2);
const logs = [];
const llama = await getLlama({
  gpu: false,
  build: "never",
  logLevel: LlamaLogLevel.debug,
  logger: (level, message) => logs.push(String(message)),
});
const model = await llama.loadModel({ modelPath: file, gpuLayers: 0, useMmap: true });

function kvBytes() {
  // llama.cpp: "llama_kv_cache: size = 0.19 MiB (64 cells, 3 layers, 1/1 seqs), K (f16): 0.09 MiB, V (f16): 0.09 MiB"
  const line = logs.filter((l) => l.includes("llama_kv_cache") && l.includes("size =")).pop();
  if (!line) return { kv_bytes: null, kv_layers: null, kv_line: null };
  const mib = Number(/size\s*=\s*([0-9.]+)\s*MiB/.exec(line)?.[1]);
  const layers = Number(/([0-9]+) layers/.exec(line)?.[1]);
  return { kv_bytes: Math.round(mib * 1024 * 1024), kv_layers: layers, kv_line: line.trim() };
}

if (mode === "tokenize") {
  // node llama_cpp_probe.mjs tokenize FILE TEXT -> the token ids llama.cpp gives TEXT (no BOS)
  console.log("PROBE " + JSON.stringify({ tokens: Array.from(model.tokenize(rest[0], false)) }));
} else if (mode === "logits") {
  const ids = typeof rest[0] === "string" && rest[0].startsWith("@") ? JSON.parse((await import("node:fs")).readFileSync(rest[0].slice(1), "utf8")) : JSON.parse(rest[0]);
  const threads = Number(rest[1] ?? 1);
  const ctx = await model.createContext({
    contextSize: 64, batchSize: 64, threads, flashAttention: false, sequences: 1,
    experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
  });
  const seq = ctx.getSequence();
  const items = ids.map((t, i) => (i === ids.length - 1 ? [t, { generateNext: { logits: true } }] : t));
  const res = await seq.controlledEvaluate(items);
  const map = res[ids.length - 1].next.logits;
  const out = {};
  for (const [tok, val] of map) out[tok] = val;
  console.log("PROBE " + JSON.stringify({ logits: out, ...kvBytes() }));
  await ctx.dispose();
} else if (mode === "bench") {
  const [promptLen, decodeLen, ctxSize, threads] = rest.slice(0, 4).map(Number);
  const ctx = await model.createContext({
    contextSize: ctxSize, batchSize: Math.max(promptLen, 32), threads, flashAttention: rest[4] === "fa",
    sequences: 1,
  });
  const seq = ctx.getSequence();
  const prompt = Array.from({ length: promptLen }, (_, i) => 100 + ((i * 7919) % 1000));
  const t0 = performance.now();
  let res = await seq.controlledEvaluate(
    prompt.map((t, i) => (i === promptLen - 1 ? [t, { generateNext: { token: true } }] : t))
  );
  const t1 = performance.now();
  let next = res[promptLen - 1].next.token;
  for (let i = 0; i < decodeLen; i++) {
    res = await seq.controlledEvaluate([[next, { generateNext: { token: true } }]]);
    next = res[0].next.token;
  }
  const t2 = performance.now();
  console.log("PROBE " + JSON.stringify({
    prefill_tok_s: promptLen / ((t1 - t0) / 1000),
    decode_tok_s: decodeLen / ((t2 - t1) / 1000),
    ...kvBytes(),
  }));
  await ctx.dispose();
}
await model.dispose();
await llama.dispose();
