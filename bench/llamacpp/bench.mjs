// llama.cpp anchor for bench/bench_anchors.py: N parallel sequences of one node-llama-cpp context on a GGUF file.
//
// Reads a JSON job on stdin: {model, prompts: [[token ids], ...], streams: [1, 8, 32], new_tokens, threads,
// repeats, sampling: {temperature, top_k, top_p}}. Writes one JSON line on stdout: per stream count the best
// aggregate tok/s over the repeats and that run's times to first token; plus what llama.cpp ran on.
// Only the prebuilt binary shipped in the npm package is used: no download, no build.
import { readFileSync } from "node:fs";
import { getLlama } from "node-llama-cpp";

const VERSION = JSON.parse(readFileSync(new URL("./node_modules/node-llama-cpp/package.json", import.meta.url),
                                        "utf8")).version;

async function readJob() {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

// One sequence: feed the prompt ids, take exactly `newTokens` sampled tokens (EOS does not stop it).
async function generate(sequence, promptIds, newTokens, options, started) {
    let firstMs = null;
    let count = 0;
    for await (const token of sequence.evaluate(promptIds, options)) {
        if (firstMs === null) firstMs = performance.now() - started;
        count += 1;
        if (count >= newTokens) break;
    }
    return { firstMs, count };
}

// All sequences start together, as requests arriving at once; the clock covers prefill and decode. The
// sequences are the context's own, reused across runs with their history cleared (a disposed sequence's
// slot is reclaimed asynchronously, so getting fresh ones right after disposing can find none left).
async function runOnce(sequences, prompts, newTokens, sampling, seedBase) {
    await Promise.all(sequences.map((sequence) => sequence.clearHistory()));
    const started = performance.now();
    const results = await Promise.all(sequences.map((sequence, i) => generate(sequence, prompts[i], newTokens, {
        temperature: sampling.temperature, topK: sampling.top_k, topP: sampling.top_p, seed: seedBase + i,
        yieldEogToken: true,  // EOS neither ends the sequence nor is skipped, as for the other systems
    }, started)));
    const seconds = (performance.now() - started) / 1000;
    const total = results.reduce((sum, r) => sum + r.count, 0);
    if (total !== prompts.length * newTokens) throw new Error(`generated ${total} tokens, expected ${prompts.length * newTokens}`);
    return { tok_s: total / seconds, ttft_ms: results.map((r) => r.firstMs) };
}

async function main() {
    const job = await readJob();
    const llama = await getLlama({ gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
                                   maxThreads: job.threads, logLevel: "error" });
    const model = await llama.loadModel({ modelPath: job.model, gpuLayers: 0 });
    const longest = Math.max(...job.prompts.map((p) => p.length));
    const out = { version: VERSION, build_type: llama.buildType, cpu_math_cores: llama.cpuMathCores, system_info: llama.systemInfo,
                  results: {} };
    for (const streams of job.streams) {
        const context = await model.createContext({
            // contextSize is the whole KV cache, shared by the sequences: room for every sequence's tokens.
            sequences: streams, contextSize: streams * (longest + job.new_tokens + 64),
            threads: { ideal: job.threads, min: job.threads },
        });
        const prompts = job.prompts.slice(0, streams);
        const sequences = prompts.map(() => context.getSequence());
        await runOnce(sequences.slice(0, 1), prompts.slice(0, 1), 2, job.sampling, 0); // warm-up
        let best = null;
        for (let r = 0; r < job.repeats; r++) {
            const run = await runOnce(sequences, prompts, job.new_tokens, job.sampling, 0);
            if (best === null || run.tok_s > best.tok_s) best = run;
        }
        out.results[streams] = best;
        await context.dispose();
    }
    await model.dispose();
    await llama.dispose();
    process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
    process.stderr.write(`llama.cpp bench failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
