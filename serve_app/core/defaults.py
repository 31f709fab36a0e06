"""Defaults shared by the server and the light client; imports nothing."""

DEFAULT_MODEL = "cross-encoder/nli-MiniLM2-L6-H768"
DEFAULT_TEMPLATE = "This example is {}."
DEFAULT_BI_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
