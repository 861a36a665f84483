"""Model identity, --model sources and refusals, on tiny random-weight models built here by transformers.

No network: hub ids resolve from a Hugging Face cache planted under a temporary HF_HOME, with
HF_HUB_OFFLINE=1. Every test points SEEDSTREAM_CACHE at its own temporary folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from arch_models import BASE

from seedstream.sampler import SamplingParams
from seedstream.server import phases
from seedstream.server.engine import EngineConfig, ModelInfo, load_engine
from seedstream.server.engine.identity import model_digests, model_files
from seedstream.server.engine.loader import default_model_path, load_weights
from seedstream.server.engine.sources import hub_patterns, resolve_model
from seedstream.server.engine.types import GenerationRequest
from seedstream.server.rpc import convert
from seedstream.server.service import receipts
from seedstream.v1.protocol import RECEIPT_VERSION

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _tokenizer():
    """A byte-level BPE over the 256 byte symbols (no merges) and two special tokens: 258 ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for special in ("<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=TEMPLATE
    )


def make_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    """A 2-layer Llama with random weights and the byte tokenizer, saved as transformers saves it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    # arch_models' tiny shapes, with a vocabulary that holds the byte tokenizer's 258 ids
    options = {**BASE, "vocab_size": 272, "bos_token_id": 256, "eos_token_id": 257}
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**{**options, **overrides})).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))


def quiet(_msg: str) -> None:
    pass


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SEEDSTREAM_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    """One tiny model, built once; tests that edit it work on a copy."""
    return make_llama(tmp_path_factory.mktemp("llama") / "tiny-llama")


def entries(cache: Path) -> list[str]:
    """The converted models in the cache (and any leftover temporary folder)."""
    return sorted(p.name for p in cache.glob("v*")) if cache.exists() else []


# --------------------------------------------------------------------------- identity


def test_each_file_kind_changes_the_identity_and_takes_effect(llama, cache, tmp_path):
    model = Path(shutil.copytree(llama, tmp_path / "m"))
    first = load_weights(str(model), quiet)
    seen = {first.model_identity}

    def reload():
        weights = load_weights(str(model), quiet)
        assert weights.model_identity not in seen, "the edit did not change the identity"
        assert weights.content_sha256 == first.content_sha256  # the weights' own hash: unchanged by design
        seen.add(weights.model_identity)
        return weights

    edit_json(model / "config.json", rms_norm_eps=1e-3)
    assert reload().config["rms_norm_eps"] == 1e-3

    edit_json(model / "generation_config.json", eos_token_id=[257, 42])
    assert 42 in reload().generation_eos

    edit_json(model / "tokenizer_config.json", eos_token="<|im_start|>")  # EOS is now id 256
    assert 256 in reload().generation_eos

    (model / "chat_template.jinja").write_text("[{{ messages[0]['content'] }}]")
    rendered = reload().tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "[hi]"

    tok = json.loads((model / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # the two letters swap ids
    (model / "tokenizer.json").write_text(json.dumps(tok))
    before = first.tokenizer.encode("ab", add_special_tokens=False)
    assert reload().tokenizer.encode("ab", add_special_tokens=False) == before[::-1]

    assert len(entries(cache)) == len(seen)  # one conversion per identity, nothing else


def test_same_weights_with_other_configs_never_share_an_entry(llama, cache, tmp_path):
    a = Path(shutil.copytree(llama, tmp_path / "a"))
    b = Path(shutil.copytree(llama, tmp_path / "b"))
    edit_json(b / "config.json", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    wa, wb = load_weights(str(a), quiet), load_weights(str(b), quiet)
    assert wa.content_sha256 == wb.content_sha256 and wa.model_identity != wb.model_identity
    assert len(entries(cache)) == 2
    assert (wa.config["rope_parameters"]["rope_theta"], wb.config["rope_parameters"]["rope_theta"]) == (1e4, 5e5)
    # ... and a plain copy (same files, another folder) is the same model: one entry, one identity.
    c = Path(shutil.copytree(llama, tmp_path / "c"))
    assert load_weights(str(c), quiet).model_identity == wa.model_identity and len(entries(cache)) == 2


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_the_framing_is_name_aware(tmp_path):
    memo = tmp_path / "hashes"
    weights = {"model.safetensors": b"W" * 100}

    def digests(name, files):
        return model_digests(model_files(_folder(tmp_path / name, {**weights, **files})), memo)

    base = digests("base", {"config.json": b"abc", "tokenizer.json": b"def"})
    moved = digests("moved", {"config.json": b"ab", "tokenizer.json": b"cdef"})  # same bytes, split elsewhere
    renamed = digests("renamed", {"config.json": b"abc", "vocab.json": b"def"})
    empty_extra = digests("extra", {"config.json": b"abc", "tokenizer.json": b"def", "merges.txt": b""})
    ignored = digests("ignored", {"config.json": b"abc", "tokenizer.json": b"def", "README.md": b"no token"})
    assert len({base.model_identity, moved.model_identity, renamed.model_identity, empty_extra.model_identity}) == 4
    assert ignored == base  # a file that cannot change a token is not part of the identity
    assert {d.model_sha256 for d in (base, moved, renamed, empty_extra)} == {hashlib.sha256(b"W" * 100).hexdigest()}


def test_a_gguf_is_its_whole_file_whatever_its_name(tmp_path):
    blob = b"GGUF" + bytes(range(256)) * 4
    one = _folder(tmp_path / "one", {"q4.gguf": blob})
    two = _folder(tmp_path / "two", {"renamed.gguf": blob})
    three = _folder(tmp_path / "three", {"q4.gguf": blob[:-1] + b"\x00"})
    d1, d2, d3 = (
        model_digests(model_files(p), tmp_path / "hashes")
        for p in (one / "q4.gguf", two / "renamed.gguf", three / "q4.gguf")
    )
    assert d1 == d2 and d1.model_identity != d3.model_identity
    assert d1.model_sha256 == hashlib.sha256(blob).hexdigest()  # the receipt's weights hash, as before
    # A side file transformers reads beside a GGUF counts too.
    (one / "generation_config.json").write_text('{"eos_token_id": 3}')
    assert model_digests(model_files(one / "q4.gguf"), tmp_path / "hashes").model_identity != d1.model_identity


@pytest.mark.parametrize("bad", ["", "   \n", "not json", '{"model_sha256": "abc", "model_identity": "def"}', "[]"])
def test_a_bad_memo_is_ignored_and_rewritten(tmp_path, bad):
    folder = _folder(tmp_path / "m", {"model.safetensors": b"weights", "config.json": b"{}"})
    memo_dir = tmp_path / "hashes"
    good = model_digests(model_files(folder), memo_dir)
    (memo,) = memo_dir.glob("*.json")
    memo.write_text(bad)  # e.g. the 0-byte memo a full disk leaves
    assert model_digests(model_files(folder), memo_dir) == good
    written = json.loads(memo.read_text())
    assert (written["model_sha256"], written["model_identity"]) == (good.model_sha256, good.model_identity)
    assert [p.name for p in memo_dir.iterdir() if p.name != ".tmp.lock"] == [memo.name]  # no temp file left


def test_the_memo_follows_every_file_of_the_identity(tmp_path):
    folder = _folder(tmp_path / "m", {"model.safetensors": b"weights", "tokenizer_config.json": b"{}"})
    memo_dir = tmp_path / "hashes"
    before = model_digests(model_files(folder), memo_dir)
    (folder / "tokenizer_config.json").write_bytes(b"[]")  # same size: the mtime and inode keys it
    os.utime(folder / "tokenizer_config.json", ns=(1, 1))
    after = model_digests(model_files(folder), memo_dir)
    assert after.model_identity != before.model_identity and after.model_sha256 == before.model_sha256
    assert len(list(memo_dir.glob("*.json"))) == 2


# --------------------------------------------------------------------------- receipts and the engine


def _info(identity: str) -> ModelInfo:
    return ModelInfo("m", "a" * 64, "float32", "cpu", 272, 128, (257,), "3.x", "1", "f32", model_identity=identity)


def test_the_receipt_digest_covers_the_identity_and_version():
    request = GenerationRequest((1, 2, 3), SamplingParams(seed=7))
    one, other = receipts.receipt(_info("b" * 64), request), receipts.receipt(_info("c" * 64), request)
    assert one.receipt_version == RECEIPT_VERSION == 2 and one.model_identity == "b" * 64
    assert one.digest != other.digest
    unversioned = type(one)()
    unversioned.CopyFrom(one)
    unversioned.receipt_version, unversioned.digest, unversioned.model_id = 1, "", ""
    assert hashlib.sha256(unversioned.SerializeToString(deterministic=True)).hexdigest() != one.digest
    scored = receipts.score_receipt(_info("b" * 64), [[1, 2]])
    assert scored.model_identity == "b" * 64 and scored.receipt_version == 2
    info = convert.model_info(
        _info("b" * 64),
        server_version="t",
        has_chat_template=True,
        max_new_tokens_limit=8,
        default_max_new_tokens=8,
        max_batch_size=1,
        max_queue=1,
    )
    assert info.model_identity == "b" * 64


def test_the_engine_reports_the_identity(llama, cache):
    engine = load_engine(EngineConfig(model=str(llama), backend="torch"), progress=quiet)
    weights = load_weights(str(llama), quiet)
    assert engine.info.model_identity == weights.model_identity and len(engine.info.model_identity) == 64
    assert engine.info.model_sha256 == weights.content_sha256 != weights.model_identity
    assert engine.info.model_id == "tiny-llama"


def test_loading_reports_each_phase_with_its_time(llama, cache):
    messages: list[str] = []
    seen_running: list[str] = []

    def progress(msg: str) -> None:
        messages.append(msg)
        running = phases.current()
        if running is not None:
            seen_running.append(running[0])

    load_weights(str(llama), progress)
    done = [m.split(":")[0] for m in messages if ": done in " in m]
    assert done == [
        "resolving the model",
        "hashing the model files",
        "converting weights",
        "loading cached weights",
    ]
    assert "converting weights" in seen_running and phases.current() is None


def test_the_start_up_heartbeat_names_the_running_phase(caplog):
    from seedstream.server.app import _heartbeat

    async def beat_during(name: str | None) -> None:
        ticker = asyncio.ensure_future(_heartbeat(time.monotonic(), every=0.01))
        if name is None:
            await asyncio.sleep(0.05)
        else:
            with phases.phase(name, quiet):
                await asyncio.sleep(0.05)
        ticker.cancel()

    with caplog.at_level(logging.INFO, logger="seedstream.server"):
        asyncio.run(beat_during("compiling kernels for avx2"))
        asyncio.run(beat_during(None))
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("loading: still compiling kernels for avx2: ") for line in lines)
    assert any(line.startswith("loading: still loading the model (") for line in lines)  # between phases


# --------------------------------------------------------------------------- where a model comes from


def test_local_sources(llama, tmp_path):
    assert resolve_model(str(llama)).path == llama and resolve_model(str(llama)).model_id == "tiny-llama"
    gguf = Path(default_model_path())
    assert resolve_model(str(gguf)).path == gguf
    one = tmp_path / "one"
    one.mkdir()
    (one / "model-q8.gguf").symlink_to(gguf)
    assert resolve_model(str(one)).path == one / "model-q8.gguf"  # the link's name, not its target's
    two = Path(shutil.copytree(one, tmp_path / "two", symlinks=True))
    (two / "model-f16.gguf").symlink_to(gguf)
    with pytest.raises(ValueError, match="model-f16.gguf, model-q8.gguf"):
        resolve_model(str(two))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no .gguf, .safetensors or .bin weights in {tmp_path / 'empty'}"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "x")):
        resolve_model(str(tmp_path / "nowhere" / "x"))


def test_sharded_and_bin_folders(llama, cache, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama)
    sharded, binary = tmp_path / "sharded", tmp_path / "binary"
    model.save_pretrained(sharded, max_shard_size="100KB")
    binary.mkdir()
    torch.save(model.state_dict(), binary / "pytorch_model.bin")  # transformers 5 no longer writes .bin itself
    for folder in (sharded, binary):
        for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            shutil.copy(llama / name, folder / name)
    assert len(list(sharded.glob("*.safetensors"))) > 1 and list(binary.glob("*.bin"))
    reference = load_weights(str(llama), quiet).state_dict
    for folder in (sharded, binary):
        state = load_weights(str(folder), quiet).state_dict
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def plant_hub_cache(hf_home: Path, repo: str, model: Path, revision: str = "0" * 40) -> Path:
    """The layout huggingface_hub writes: blobs by content hash, a snapshot of links to them, refs/main."""
    root = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (root / "blobs").mkdir()
    for f in sorted(model.iterdir()):
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # "org/name" must not also be a folder here
    return hf_home


def test_a_hub_id_resolves_from_the_local_cache(llama, cache, offline_hub):
    snapshot = plant_hub_cache(offline_hub, "SmallOrg/tiny-llama", llama)
    source = resolve_model("SmallOrg/tiny-llama")
    assert source.path == snapshot and source.model_id == "SmallOrg/tiny-llama"
    weights = load_weights("SmallOrg/tiny-llama", quiet)
    assert weights.model_id == "SmallOrg/tiny-llama"
    assert weights.model_identity == load_weights(str(llama), quiet).model_identity  # same files, same model


def test_a_hub_id_missing_from_the_cache_says_where_it_looked(offline_hub):
    with pytest.raises(FileNotFoundError) as failure:
        resolve_model("SmallOrg/not-there")
    message = str(failure.value)
    assert "SmallOrg/not-there" in message and str(offline_hub / "hub") in message and "HF_HUB_OFFLINE" in message


def test_what_is_downloaded_of_a_hub_repository():
    files = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"]
    assert hub_patterns(files, "o/n")[0] == "*.safetensors" and "tokenizer.json" in hub_patterns(files, "o/n")
    assert hub_patterns(["a.gguf", "README.md"], "o/n")[0] == "a.gguf"
    with pytest.raises(ValueError, match=r"2 .gguf files \(m-Q4.gguf, m-Q8.gguf\): name one as o/n/<file>.gguf"):
        hub_patterns(["m-Q8.gguf", "m-Q4.gguf"], "o/n")
    assert hub_patterns(["m-Q8.gguf", "m-Q4.gguf"], "o/n", "m-Q4.gguf")[0] == "m-Q4.gguf"


# --------------------------------------------------------------------------- refusals


def test_an_unsupported_model_is_refused_before_conversion(cache, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=272, n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=256, eos_token_id=257)
    ).save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    with pytest.raises(ValueError) as failure:
        load_weights(str(folder), quiet)
    message = str(failure.value)
    assert str(folder) in message and "gpt2" in message and "llama" in message  # what, and what is supported
    assert entries(cache) == []  # no conversion, no temporary folder
