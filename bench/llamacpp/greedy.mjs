// Greedy tokens from llama.cpp (node-llama-cpp's prebuilt CPU binary) for tests/engine/test_llamacpp_interop.py.
//
// Reads a JSON job on stdin: {models: [paths], prompt: [token ids], new_tokens, threads}. Writes one JSON line
// on stdout: {version, build_type, tokens: {path: [ids]}, errors: {path: message}}. The prompt is fed as ids
// (no tokenizer involved) and exactly new_tokens are taken at temperature 0 (EOS neither stops nor is skipped).
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

async function greedy(llama, path, job) {
    const model = await llama.loadModel({ modelPath: path, gpuLayers: 0 });
    try {
        const context = await model.createContext({
            sequences: 1, contextSize: job.prompt.length + job.new_tokens + 64,
            threads: { ideal: job.threads, min: job.threads },
        });
        const tokens = [];
        // temperature 0 is greedy; no repeat penalty is applied unless asked for
        for await (const token of context.getSequence().evaluate(job.prompt, { temperature: 0, yieldEogToken: true })) {
            tokens.push(token);
            if (tokens.length >= job.new_tokens) break;
        }
        await context.dispose();
        return tokens;
    } finally {
        await model.dispose();
    }
}

async function main() {
    const job = await readJob();
    const llama = await getLlama({ gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
                                   maxThreads: job.threads, logLevel: "error" });
    const out = { version: VERSION, build_type: llama.buildType, tokens: {}, errors: {} };
    for (const path of job.models) {
        try {
            out.tokens[path] = await greedy(llama, path, job);
        } catch (err) {  // one file llama.cpp refuses must not hide the others' results
            out.errors[path] = String(err && err.message ? err.message : err);
        }
    }
    await llama.dispose();
    process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
    process.stderr.write(`llama.cpp greedy failed: ${err && err.stack ? err.stack : err}\n`);
    process.exit(1);
});
