"""Engine fixtures: the real default model, loaded once per session; the devices the determinism tests run on
(tests/engine/device_cases.py), whose cuda cases take a tiny random-weight model built at test time."""

import functools

import pytest
from device_cases import DEVICES, case_device, save_tiny_llama

from seedstream.server.cachefs import cache_root
from seedstream.server.engine import EngineConfig, load_engine
from seedstream.server.engine.loader import load_weights

# scripts/cuda_check.sh runs just the cuda cases (-k cuda), on a GPU machine or, as a dry run, on the CPU.


@pytest.fixture(params=DEVICES)
def device(request):
    """The case a determinism test runs: "cpu" (the default model on the CPU) or "cuda" (the tiny model on
    device_cases.CUDA_CASE_DEVICE). engine_factory(device=...) and case_model() map it to model and device."""
    return request.param


@pytest.fixture(scope="session")
def default_weights():
    """A function giving the default model's weights, loaded at its first call (cuda cases never load them)."""
    return functools.cache(lambda: load_weights(None, progress=lambda msg: None))


@pytest.fixture(scope="session")
def weights(default_weights):
    return default_weights()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A function giving device_cases.TINY_LLAMA's model folder, saved at its first call (cpu-only runs
    never build it)."""
    return functools.cache(lambda: save_tiny_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def case_weights(default_weights, tiny_model_dir):
    """case -> the weights its tests run on: the default model's for "cpu", the tiny model's for "cuda"."""
    tiny = functools.cache(lambda: load_weights(str(tiny_model_dir()), progress=lambda msg: None))
    return lambda case: tiny() if case == "cuda" else default_weights()


@pytest.fixture(scope="session")
def engine_factory(tiny_model_dir):
    """Build engines on the default model; each test starts and stops its own. device="cuda" builds the
    cuda case instead: the tiny model on the torch path of device_cases.CUDA_CASE_DEVICE. tiny=True takes the
    tiny model on the torch path of the device asked for."""

    def make(tiny=False, **overrides):
        if tiny or overrides.get("device") == "cuda":
            overrides = {"model": str(tiny_model_dir()), "backend": "torch", **overrides}
        if overrides.get("device") == "cuda":
            overrides["device"] = case_device("cuda")
        return load_engine(EngineConfig(**overrides), progress=lambda msg: None)

    return make


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache for one test (SEEDSTREAM_CACHE), sharing the user cache's compiled kernels: compiling them
    again (about a minute on 2 cores) is not what a loading test is about."""
    kernels = cache_root() / "kernels"
    kernels.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "kernels").symlink_to(kernels)
    monkeypatch.setenv("SEEDSTREAM_CACHE", str(root))
    return root
