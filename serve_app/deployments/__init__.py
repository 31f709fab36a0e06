"""Ray Serve shells: each deployment wires Ray to code that runs without it (the engine, the
HTTP app, the job scheduler, the token buckets), and holds no logic of its own beyond that."""
