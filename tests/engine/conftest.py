"""Engine fixtures: the real default model, loaded once per session."""

import pytest

from seedstream.server.engine import EngineConfig, load_engine
from seedstream.server.engine.loader import load_weights


@pytest.fixture(scope="session")
def weights():
    return load_weights(None, progress=lambda msg: None)


@pytest.fixture(scope="session")
def engine_factory():
    """Build engines on the default model; each test starts and stops its own."""

    def make(**overrides):
        return load_engine(EngineConfig(**overrides), progress=lambda msg: None)

    return make
