"""One replica's work, with no Ray: load a model, tokenize pairs, schedule them by length, run
a backend, and turn logits into typed results (docs/ARCHITECTURE.md, "The engine")."""
