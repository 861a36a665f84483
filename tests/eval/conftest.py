"""Fixtures for the evaluation tests: real engines served by real grpc.aio servers on loopback ports.

`server` runs the default model (SmolLM2-135M-Instruct, float32); `bf16_server` the same model in
bfloat16; `tiny_server` a tiny random Llama saved with save_pretrained (a different model).
"""

from __future__ import annotations

import asyncio
import threading

import pytest


class LoopThread:
    """An asyncio loop on a daemon thread: the server side of the tests."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="eval-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def eval_loop():
    lt = LoopThread()
    yield lt
    lt.close()


def _serve(loop: LoopThread, **config):
    from seedstream.server.app import SeedstreamServer
    from seedstream.server.engine import EngineConfig, load_engine

    engine = load_engine(EngineConfig(**config), progress=lambda msg: None)
    server = SeedstreamServer(engine, host="127.0.0.1", port=0)
    loop.run(server.start())
    return server


@pytest.fixture(scope="session")
def server(eval_loop):
    """The default model, float32: `server.address` is host:port, `server.state.engine` the engine."""
    srv = _serve(eval_loop)
    yield srv
    eval_loop.run(srv.shutdown(5.0))


@pytest.fixture(scope="session")
def bf16_server(eval_loop):
    srv = _serve(eval_loop, dtype="bfloat16")
    yield srv
    eval_loop.run(srv.shutdown(5.0))


@pytest.fixture(scope="module")
def other_settings_server(eval_loop):
    """The default model with other batch, chunk and thread settings: the same build, so the same bits."""
    import torch

    threads = torch.get_num_threads()  # num_threads is process-wide: given back afterwards
    srv = _serve(eval_loop, max_batch_size=3, prefill_chunk=32, max_step_tokens=64, num_threads=1)
    yield srv
    eval_loop.run(srv.shutdown(5.0))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with the default model's tokenizer (deterministic weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from seedstream.server.engine.loader import load_weights

    tokenizer = load_weights(None, progress=lambda msg: None).tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_server(eval_loop, tiny_model_dir):
    srv = _serve(
        eval_loop, model=str(tiny_model_dir), weights="q4_1"
    )  # the default model's format: only the model differs
    yield srv
    eval_loop.run(srv.shutdown(5.0))


@pytest.fixture(scope="session")
def lm_eval_tasks():
    """lm-eval's index of the local tasks, built once for the in-process runs (lm_eval_runs.py)."""
    from lm_eval_runs import task_index

    return task_index()


@pytest.fixture
def client(server):
    from seedstream.client import Client

    with Client(server.address, timeout=300) as c:
        yield c
