// seedstream playground: streams from the OpenAI-compatible API and checks replays token by token.
// No build step, nothing fetched from elsewhere. Seeds stay strings: they go up to 2^64, past
// what a JavaScript number holds exactly.
"use strict";

const $ = (id) => document.getElementById(id);
let last = null;        // the previous run: {body, seed, ids, digest}
let controller = null;  // aborts the running request (closing the stream cancels it on the server)

// The API key stays in this page's input field: never stored, sent only to this server as a Bearer header.
function headers(extra) {
  const key = $("api_key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

async function loadModel() {
  try {
    const reply = await fetch("/v1/models", { headers: headers({}) });
    const data = await reply.json();
    if (!reply.ok) throw new Error(data.error ? data.error.message : reply.statusText);
    const m = data.data[0];
    $("model").textContent = `${m.id} · ${m.dtype} on ${m.device} · system_fingerprint ${m.system_fingerprint}`;
    $("model").dataset.ready = "1";
  } catch (err) {
    $("model").textContent = `model not ready: ${err.message}`;
  }
}

function mode() { return document.querySelector('input[name="mode"]:checked').value; }

function requestBody() {
  const body = { model: "seedstream", stream: true, max_tokens: parseInt($("max_tokens").value, 10) };
  for (const name of ["temperature", "top_p", "min_p", "repetition_penalty"]) body[name] = parseFloat($(name).value);
  body.top_k = parseInt($("top_k").value, 10);
  if (mode() === "chat") body.messages = [{ role: "user", content: $("input").value }];
  else body.prompt = $("input").value;
  return body;
}

function withSeed(body, seed) {
  const json = JSON.stringify(body);
  return seed === "" ? json : json.slice(0, -1) + `,"seed":${seed}}`;  // exact, as a JSON integer
}

async function run(body, seed, compareTo) {
  const seedText = seed.trim();
  if (seedText !== "" && !/^\d+$/.test(seedText)) { setStatus("seed must be a whole number"); return; }
  const output = $("output");
  output.textContent = "";
  output.dataset.chunks = "0";
  $("verdict").textContent = ""; $("verdict").className = "";
  setBusy(true);
  setStatus("waiting for the first token…");
  controller = new AbortController();
  const ids = [];
  let receipt = null, finish = null, usedSeed = seedText;
  try {
    const path = body.messages ? "/v1/chat/completions" : "/v1/completions";
    const reply = await fetch(path, { method: "POST", headers: headers({ "Content-Type": "application/json" }),
                                      body: withSeed(body, seedText), signal: controller.signal });
    if (!reply.ok) { const e = await reply.json(); throw new Error(e.error.message); }
    usedSeed = reply.headers.get("seedstream-seed") || usedSeed;
    $("seed").value = usedSeed;
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          const text = choice.delta ? (choice.delta.content || "") : choice.text;
          const tokenIds = choice.token_ids || [];
          if (text || tokenIds.length) addSpan(text, tokenIds, ids, compareTo);
          if (choice.finish_reason) finish = choice.finish_reason;
          if (choice.receipt) receipt = choice.receipt;
        }
        setStatus(`streaming… ${ids.length} tokens`);
      }
    }
  } catch (err) {
    setBusy(false);
    setStatus(err.name === "AbortError" ? "stopped" : `error: ${err.message}`);
    return;
  }
  setBusy(false);
  $("receipt").textContent = receipt ? JSON.stringify(receipt, null, 2) : "no receipt";
  setStatus(`done: ${ids.length} tokens, finish_reason ${finish}, seed ${usedSeed}`);
  const current = { body, seed: usedSeed, ids, digest: receipt ? receipt.digest : null };
  if (compareTo) showVerdict(compareTo, current);
  last = current;
  $("replay").disabled = false;
}

function addSpan(text, tokenIds, ids, compareTo) {
  const span = document.createElement("span");
  span.textContent = text;
  span.title = "token ids " + tokenIds.join(", ");
  if (compareTo) {
    const same = tokenIds.every((t, k) => compareTo.ids[ids.length + k] === t);
    span.className = same ? "same" : "diff";
  }
  ids.push(...tokenIds);
  const output = $("output");
  output.appendChild(span);
  output.dataset.chunks = String(parseInt(output.dataset.chunks, 10) + 1);
}

function showVerdict(before, now) {
  const n = Math.min(before.ids.length, now.ids.length);
  let first = -1;
  for (let i = 0; i < n; i++) if (before.ids[i] !== now.ids[i]) { first = i; break; }
  if (first < 0 && before.ids.length !== now.ids.length) first = n;
  const v = $("verdict");
  if (first < 0 && before.digest === now.digest) {
    v.textContent = `replay identical: ${now.ids.length}/${before.ids.length} tokens, same receipt digest`;
    v.className = "ok";
  } else {
    v.textContent = first < 0 ? "tokens identical but the receipt digest differs"
                              : `replay differs from token ${first} on`;
    v.className = "bad";
  }
}

function setStatus(text) { $("status").textContent = text; }

function setBusy(busy) {
  for (const id of ["generate", "new-seed"]) $(id).disabled = busy;
  $("replay").disabled = busy || !last;
  $("stop").disabled = !busy;
}

$("generate").addEventListener("click", () => run(requestBody(), $("seed").value, null));
$("replay").addEventListener("click", () => { if (last) run(last.body, last.seed, last); });
$("new-seed").addEventListener("click", () => { $("seed").value = ""; run(requestBody(), "", null); });
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("api_key").addEventListener("change", loadModel);
loadModel();
