"""A GGUF read natively (issue 22): its canonical state equals transformers' conversion, it is served as before,
its cache entry holds no float32 copy of the matrices, and the default model's server stays near the file's size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import write_gguf
from arch_models import GGUF_ROUND_TRIP, build_hf_model, prompt
from test_served_architectures import _serve, hf_greedy
from tiny_tokenizer import save_tiny_tokenizer

from seedstream.sampler import SamplingParams
from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine, loader
from seedstream.server.engine.arch import ModelConfig, canonical_state_dict
from seedstream.server.engine.gguf_tensors import StoredTensor
from seedstream.server.engine.loader import default_model_path, load_weights

# Every architecture in F32 and Q8_0; the K-type mixes on one architecture of each naming scheme
# (llama's permuted q/k, phi3's fused q/k/v and gate/up, gemma2's 1 + w norms and sandwich norms).
CASES = [(name, kind) for name in sorted(GGUF_ROUND_TRIP) for kind in ("f32", "q8_0")]
CASES += [(name, kind) for name in ("llama", "phi3-partial-rotary", "gemma2") for kind in ("q4_k_m", "mixed")]


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def cache(fresh_cache):
    return fresh_cache


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """name -> a tiny transformers model folder (built once per architecture, on demand)."""
    made = {}

    def get(name):
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            build_hf_model(name, **GGUF_ROUND_TRIP[name]).save_pretrained(str(folder))
            save_tiny_tokenizer(folder)
            made[name] = folder
        return made[name]

    return get


def _gguf(folders, tmp_path, name: str, kind: str):
    """The GGUF of `name` in `kind`, alone in its folder (a tokenizer.json beside it would be read instead)."""
    out = tmp_path / f"{name}-{kind}" / f"{name}-{kind}.gguf"
    out.parent.mkdir()
    write_gguf.write_gguf(folders(name), out, kind)
    return out


def _transformers_state(path) -> dict[str, torch.Tensor]:
    """transformers' own reading of the file (dequantised, float32), under canonical names."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return canonical_state_dict(ModelConfig.from_hf(model.config.to_dict()), state)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_the_native_state_equals_transformers_conversion(folders, tmp_path, cache, name, kind):
    path = _gguf(folders, tmp_path, name, kind)
    weights = load_weights(str(path), quiet)
    reference = _transformers_state(path)
    assert set(weights.state_dict) == set(reference)
    for key, expected in reference.items():
        got = weights.state_dict[key]
        assert got.dtype == torch.float32 and torch.equal(got, expected), f"{name} {kind}: {key} differs"
    for key, stored in weights.stored.items():  # every matrix is kept as the file stores it
        assert isinstance(stored, StoredTensor) and stored.rows.shape[0] == reference[key].shape[0], key
    assert not any(key.endswith("norm.weight") for key in weights.stored), "norms are float32 tensors"


def test_the_conversion_parses_a_gguf_once_and_reads_what_transformers_reads(folders, tmp_path, monkeypatch):
    """_metadata's tokenizer and config of a GGUF (one shared gguf.GGUFReader) equal transformers' own separate
    readings, and the file is parsed once, not once per reading; the whole conversion (its support check too) also
    parses it once."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    path = _gguf(folders, tmp_path, "llama", "q8_0")
    parse, parsed = gguf.GGUFReader, []
    monkeypatch.setattr(gguf, "GGUFReader", lambda *a, **k: parsed.append(a) or parse(*a, **k))
    tokenizer, config, _ = loader._metadata(path)
    assert len(parsed) == 1 and gguf.GGUFReader is not parse, "one parse, and the reader is put back"
    parsed.clear()
    (tmp_path / "entry").mkdir()
    loader._convert_files(path, tmp_path / "entry")  # the whole conversion: the support check, then the entry
    assert len(parsed) == 1 and (tmp_path / "entry" / "seedstream.json").is_file()
    monkeypatch.undo()
    assert gguf.GGUFReader is parse
    kwargs = {"gguf_file": path.name}
    expected = AutoConfig.from_pretrained(path.parent, **kwargs).to_dict()
    expected.pop("quantization_config", None)
    assert config == expected
    reference = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    assert tokenizer.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()
    text = "Hello, wörld!\n  tabs\tand 12345"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]


@pytest.mark.slow
def test_a_served_gguf_gives_transformers_tokens_and_caches_no_float32_matrices(folders, tmp_path, cache):
    path = _gguf(folders, tmp_path, "llama", "q8_0")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ids = prompt(40, reference.config.vocab_size, seed=7)
    request = GenerationRequest(tuple(ids), SamplingParams(temperature=0.0, seed=1), max_new_tokens=12, ignore_eos=True)
    expected = hf_greedy(reference.eval(), ids, 12)
    for backend in ("kernels", "torch"):
        engine = load_engine(EngineConfig(model=str(path), backend=backend), progress=quiet)
        (tokens, *_), *_ = _serve(engine, [request])[0]
        assert tokens == expected, backend
    (entry,) = cache.glob("v*")
    assert not list(entry.glob("*.safetensors")), "a GGUF's cache entry holds its config and tokenizer only"
    (packed,) = cache.glob("packed-*-auto/matrices.safetensors")
    assert packed.stat().st_size <= 1.2 * path.stat().st_size, "packed as stored, no float32 copy"


# Loaded in a fresh process (nothing else in its memory): VmRSS after start, and the cache's size on disk.
_MEASURE = textwrap.dedent("""
    import json, pathlib
    from seedstream.server.engine import EngineConfig, load_engine
    engine = load_engine(EngineConfig(), progress=lambda msg: None)
    rss = [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS")][0]
    root = pathlib.Path(__import__("os").environ["SEEDSTREAM_CACHE"])
    disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "kernels" not in p.parts[-2:]
               and p.parent.name != "hashes")
    print(json.dumps({"rss": rss, "disk": disk, "format": engine.info.weight_format}))
""")


@pytest.mark.slow
def test_the_default_models_server_stays_near_the_files_size(tmp_path):
    """Idle RSS <= file + 300 MB (no KV is used yet), the issue's goal, after a cold start and after a warm one;
    the cache <= 1.2x the file. A cold start converts and packs in child processes and then reads the packed
    weights as a warm start does: both measured 286 MB (file 98 MB; before, a cold start packing in the server
    kept 375-446 MB)."""
    size = os.path.getsize(default_model_path())
    env = {**os.environ, "SEEDSTREAM_CACHE": str(tmp_path / "cache")}
    kernels = os.path.join(os.environ.get("SEEDSTREAM_CACHE") or os.path.expanduser("~/.cache/seedstream"), "kernels")
    if os.path.isdir(kernels):  # the compiled kernels: not what this test measures
        os.makedirs(tmp_path / "cache")
        os.symlink(kernels, tmp_path / "cache" / "kernels")
    for start in ("cold", "warm"):
        out = subprocess.run([sys.executable, "-c", _MEASURE], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["format"] == "q4_1"
        assert got["rss"] <= size + 300e6, f"{start} start: RSS {got['rss'] / 1e6:.0f} MB, file {size / 1e6:.0f} MB"
        assert got["disk"] <= 1.2 * size, f"cache {got['disk'] / 1e6:.0f} MB, file {size / 1e6:.0f} MB"


# A fresh process serves one request, then a burst of 8 together, each time waiting for the engine, idle, to give
# back its steps' memory: RSS after each, and the prefix cache's bytes (the KV the server keeps on purpose).
_BURST = textwrap.dedent("""
    import asyncio, json
    from seedstream.sampler import SamplingParams
    from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine
    engine = load_engine(EngineConfig(), progress=lambda msg: None)
    rss = lambda: [int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS")][0]
    async def serve(n):
        await engine.start()
        async def one(i):
            ids = tuple(range(1000 + 40 * i, 1032 + 40 * i))
            req = GenerationRequest(ids, SamplingParams(temperature=0.0, seed=i), max_new_tokens=64, ignore_eos=True)
            return [t async for chunk in engine.generate(engine.validate(req)[0]) for t in chunk.token_ids]
        released = engine.memory_releases
        await asyncio.gather(*(one(i) for i in range(n)))
        while engine.memory_releases == released:  # the engine gives its steps' memory back once idle
            await asyncio.sleep(0.01)
        await engine.stop()
        engine._thread, engine._stopping = None, False  # started again by the next serve()
        return rss(), engine.prefix_cache.stats.bytes
    print(json.dumps([asyncio.run(serve(1)), asyncio.run(serve(8))]))
""")


@pytest.mark.slow
def test_a_burst_of_streams_leaves_only_its_prefix_cache_behind():
    """After the engine goes idle, 8 streams (32 + 64 tokens each) leave RSS where one stream did plus the KV
    the prefix cache keeps (and 25 MB of slack): the finished sequences' KV caches, the kernels' scratch of the
    256-row prefill and the heap's free pages are given back. Measured on the default model: +13.6 MB for +10.3
    MB of prefix cache (before: +67 MB)."""
    out = subprocess.run([sys.executable, "-c", _BURST], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (one, kv_one), (burst, kv_burst) = json.loads(out.stdout.strip().splitlines()[-1])
    grown, kept = (burst - one) / 1e6, (kv_burst - kv_one) / 1e6
    assert grown <= kept + 25, f"RSS grew {grown:.0f} MB over the burst, the prefix cache {kept:.0f} MB"
