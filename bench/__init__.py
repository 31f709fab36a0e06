"""zsc's benchmarks: `python -m bench` (the service, `zsc bench`) and one script per subject."""
