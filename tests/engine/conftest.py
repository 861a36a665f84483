"""Engine fixtures: the real default model, loaded once per session; the devices the determinism tests run on."""

import pytest
import torch

from seedstream.server.engine import EngineConfig, load_engine
from seedstream.server.engine.loader import load_weights

# The determinism tests run once per device. "cuda" is skipped at collection, at no cost, where torch sees no
# CUDA device (a CPU torch build, or no GPU); scripts/cuda_check.sh runs just these cases on a GPU machine.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="no CUDA device (torch.cuda.is_available() is False); scripts/cuda_check.sh "
                "runs these on a GPU machine",
            ),
        ],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device a determinism test runs on: "cpu", and "cuda" where one is present."""
    return request.param


@pytest.fixture(scope="session")
def weights():
    return load_weights(None, progress=lambda msg: None)


@pytest.fixture(scope="session")
def engine_factory():
    """Build engines on the default model; each test starts and stops its own."""

    def make(**overrides):
        return load_engine(EngineConfig(**overrides), progress=lambda msg: None)

    return make
