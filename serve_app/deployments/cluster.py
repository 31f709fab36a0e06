"""What the live Ray cluster offers (the placement check, serve_app/core/placement.py) and where
its Serve HTTP proxy listens (the exposure check, serve_app/http/middleware/auth.py)."""

from __future__ import annotations


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node, or [] when this process has no Ray."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def serve_http_host() -> tuple[bool, str | None]:
    """(known, host): the running Serve instance's HTTP bind address, as its controller holds
    it; (False, None) when this process has no Ray or no Serve is running yet (`serve run`
    builds the app before it starts Serve: the Ingress replica checks then)."""
    import ray

    if not ray.is_initialized():
        return False, None
    from ray.serve.context import _get_global_client

    try:
        client = _get_global_client(raise_if_no_controller_running=False)
    except Exception:  # a controller that is starting or gone: nothing to read yet
        return False, None
    if client is None:
        return False, None
    host: str | None = client.http_config.host
    return True, host
