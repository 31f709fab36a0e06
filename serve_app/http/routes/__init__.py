"""One module per API shape or resource; each renders its own answers from typed results."""
