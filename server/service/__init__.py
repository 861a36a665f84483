"""The layer under both fronts (server/rpc for gRPC, server/http for OpenAI-style HTTP).

It holds what a front needs besides its own wire format: the state (engine handle, options, in-flight
accounting), running work off the event loop, chat rendering, seeds, request ids, input limits,
receipts, the Prometheus metrics both fronts report to, and the errors a request can end with. It
imports neither grpc nor aiohttp, and neither front imports the other: each turns its wire format into
the engine's types, calls the engine, and maps the errors of `service.errors` to its own status codes in
one place (rpc/errors.py, http/errors.py).
"""
