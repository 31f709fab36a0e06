"""Whether a layout's deployments can be placed on a cluster, checked before Serve waits forever.

A `Demand` is one deployment's per-replica resources times its replicas; a node is its total
resources (`ray.nodes()[i]["Resources"]`). `placement_problem` answers None when every replica
fits, or one line naming the deployment and what it lacks: a replica must fit on ONE node, and
all replicas together must pack onto the nodes (first fit, largest first). It compares against
the nodes' totals, not what is free now, so replicas of other apps (or the previous version of
this one) never make a layout look impossible. Pure: no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Ray's bookkeeping resources: never requested by a deployment, so never compared.
_IGNORED = ("memory", "object_store_memory")
_EPS = 1e-9


class PlacementError(RuntimeError):
    """A deployment cannot be placed; raised in the Ingress replica (Serve shows the message)."""


@dataclass(frozen=True)
class Demand:
    """One deployment: the resources each replica reserves and how many replicas start."""

    name: str
    replicas: int
    resources: Mapping[str, float] = field(default_factory=dict)

    def per_replica(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.resources.items() if v > 0}


def _fmt(resources: Mapping[str, float]) -> str:
    if not resources:
        return "{}"
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def _fits(need: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in need.items())


def _node_view(node: Mapping[str, float]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in node.items()
        if k not in _IGNORED and not k.startswith("node:") and not k.startswith("accelerator_type")
    }


def _lacking(need: Mapping[str, float], nodes: Sequence[Mapping[str, float]]) -> str:
    """What the best node lacks for one replica: the resource no node offers, else the one
    short by the most on the node that comes closest."""
    missing = [k for k in need if not any(k in n for n in nodes)]
    if missing:
        return f"no node offers {', '.join(sorted(missing))}"
    best = {k: max(n.get(k, 0.0) for n in nodes) for k in need}
    short = {k: v for k, v in need.items() if best[k] + _EPS < v}
    if short:
        return "the largest node has " + _fmt({k: best[k] for k in short})
    return "no single node has all of them at once"


def placement_problem(
    demands: Sequence[Demand], nodes: Sequence[Mapping[str, float]]
) -> str | None:
    """None when every replica of every demand fits the nodes, else one line saying why not.

    `nodes` hold each alive node's total resources; the special `node:<ip>` resources that pin
    to a node are compared as given (a demand on `node:__internal_head__` fits the head only).
    """
    if not nodes:
        return None  # nothing to compare against (no cluster in this process): Serve decides
    free = [dict(n) for n in nodes]
    for demand in demands:
        need = demand.per_replica()
        if not any(_fits(need, n) for n in nodes):
            return (
                f"zsc: the {demand.name} deployment cannot be placed: each replica needs "
                f"{_fmt(need)} and {_lacking(need, [_node_view(n) for n in nodes])}. "
                "Lower its num_cpus/num_gpus or fix its resources in the config, or add a node."
            )
    # All replicas together, largest first, each on the first node with room left.
    replicas = [(d, d.per_replica()) for d in demands for _ in range(d.replicas)]
    replicas.sort(key=lambda item: -sum(item[1].values()))
    for demand, need in replicas:
        for node in free:
            if _fits(need, node):
                for k, v in need.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            total: dict[str, float] = {}
            for d in demands:
                for k, v in d.per_replica().items():
                    total[k] = total.get(k, 0.0) + v * d.replicas
            have = {k: sum(n.get(k, 0.0) for n in nodes) for k in total}
            layout = ", ".join(f"{d.name} {d.replicas} x {_fmt(d.per_replica())}" for d in demands)
            return (
                f"zsc: the {demand.name} deployment cannot be placed beside the others: "
                f"together they need {_fmt(total)} ({layout}) and the cluster has {_fmt(have)}. "
                "Lower num_cpus or num_replicas in the config, or add a node."
            )
    return None
