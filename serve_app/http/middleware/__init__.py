"""Pure ASGI middleware: API keys, and bounds on what a client can make the server read."""
