"""Runs made of hand-written documents, for what a modern RunEngine cannot emit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from event_model import compose_run

__all__ = ["changing_stream"]


def changing_stream(
    descriptors: list[dict[str, dict]],
    values: Callable[[str, dict, int], Any],
    n: int = 3,
    configurations: list[dict] | None = None,
) -> list[tuple[str, dict]]:
    """A run whose ``primary`` stream has one descriptor per item of ``descriptors`` (its
    data_keys, and its ``configuration`` from ``configurations`` if given), ``n`` events each,
    valued ``values(field, data_key, seq_num)``.

    Written by hand because event_model refuses data_keys that change within a stream, which
    older data has.

    Example:
        >>> docs = changing_stream([{"x": {"dtype": "number", "shape": [], "source": "s"}}],
        ...                        lambda k, dk, seq: seq / 2, n=2)
        >>> [name for name, _ in docs]
        ['start', 'descriptor', 'event', 'event', 'stop']
    """
    bundle = compose_run(metadata={"scan_id": 42, "plan_name": "handmade", "motors": ["x"]})
    docs: list[tuple[str, dict]] = [("start", bundle.start_doc)]
    seq = 0
    for i, keys in enumerate(descriptors):
        desc = {
            "uid": str(uuid.uuid4()),
            "run_start": bundle.start_doc["uid"],
            "time": time.time(),
            "name": "primary",
            "data_keys": keys,
            "object_keys": {k: [k] for k in keys},
            "configuration": configurations[i] if configurations else {},
            "hints": {},
        }
        docs.append(("descriptor", desc))
        for _ in range(n):
            seq += 1
            event = {
                "uid": str(uuid.uuid4()),
                "descriptor": desc["uid"],
                "time": 1.7e9 + seq / 7,
                "seq_num": seq,
                "data": {k: values(k, dk, seq) for k, dk in keys.items()},
                "timestamps": dict.fromkeys(keys, 1.7e9),
                "filled": {},
            }
            docs.append(("event", event))
    docs.append(("stop", bundle.compose_stop()))
    return docs
