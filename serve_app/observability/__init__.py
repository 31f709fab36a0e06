"""Every zsc_* metric, defined in one place (docs/OPERATIONS.md lists them)."""
