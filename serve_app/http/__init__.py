"""The HTTP edge: the FastAPI app, its middleware, routes, bodies and error envelope."""
