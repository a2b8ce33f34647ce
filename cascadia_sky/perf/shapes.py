"""The TP x PP shapes a model may be split into: one enumeration shared by spec validation and the planner.

TP is a power of two within one node (GPUs per node of the type), PP a power of two up to `MAX_PIPELINE_PARALLEL`,
and TP * PP at most the GPUs available; a pinned TP or PP replaces its list. Whether a shape fits memory is the
caller's question (`memory_fit`), so validation can report why the last shape failed.
"""

from __future__ import annotations

from cascadia_sky.constants import MAX_PIPELINE_PARALLEL


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to and including `limit`."""
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def shape_grid(gpus_per_node: int, max_gpus: int, tp_pin: int | None = None,
               pp_pin: int | None = None) -> list[tuple[int, int]]:
    """(TP, PP) pairs in the order validation tries them: TP ascending, then PP ascending."""
    tps = [tp_pin] if tp_pin else powers_of_two(gpus_per_node)
    pps = [pp_pin] if pp_pin else powers_of_two(MAX_PIPELINE_PARALLEL)
    return [(tp, pp) for tp in tps if tp <= gpus_per_node for pp in pps if tp * pp <= max_gpus]
