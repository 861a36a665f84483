"""Prepended to subprocess test scripts: make torch and the server side unimportable, as after
`pip install seedstream` with no extras."""

import importlib.abc
import sys

BLOCKED = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "accelerate",
    "gguf",
    "grpc_health",
    "grpc_reflection",
    "seedstream.server",
    "seedstream.sampler",
)


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"blocked for this test: {name}")
        return None


sys.meta_path.insert(0, Blocker())
