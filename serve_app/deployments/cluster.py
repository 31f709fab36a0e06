"""What the live Ray cluster offers, for the placement check (serve_app/core/placement.py)."""

from __future__ import annotations


def live_nodes() -> list[dict[str, float]]:
    """The total resources of each alive node, or [] when this process has no Ray."""
    import ray

    if not ray.is_initialized():
        return []
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
