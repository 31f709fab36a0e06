"""zsc: zero-shot text classification with an NLI cross-encoder on Ray Serve.

The package's folders are a map of the architecture; docs/ARCHITECTURE.md describes it.
Importing this package imports nothing else (the standard library's metadata reader aside),
so the light client (`serve_app.client`) installs and imports without the server's dependencies.
`__version__` is the one place the version is read (the OpenAPI document, image tags).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zsc")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
