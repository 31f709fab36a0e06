"""zsc: zero-shot text classification with an NLI cross-encoder on Ray Serve.

The package's folders are a map of the architecture; docs/ARCHITECTURE.md describes it.
Importing this package imports nothing else, so the light client (`serve_app.client`)
installs and imports without the server's dependencies.
"""
