"""``runbroker db stats``: compute the per-field statistics of stored runs that lack them.

Runs get their statistics when they stop; runs stored before statistics existed, or run
files a folder catalog did not write itself, get them here. ``--fill`` also reads the
detector files of file-backed fields (images), so that ``Field("primary", "fccd_image").sum()``
can find them.

Example:
    $ runbroker db stats runs.db                # runs without statistics
    $ runbroker db stats runs.db --fill         # ... and file-backed fields, read from files
    $ runbroker db stats runs.db --recompute    # every stopped run again
"""

from __future__ import annotations

import argparse
from typing import Any

from .catalog import Catalog, Run
from .queries import KeyPresent
from .store.base import KeepsStats
from .store.stats import Accumulator, summarise_store

__all__ = ["compute_stats", "fill_stats"]


def compute_stats(run: Run, fill: bool = False) -> dict[str, dict[str, dict[str, Any]]]:
    """The statistics of a stored run, from its stored pages; ``fill``: with its
    file-backed fields read through the catalog's filler as well.

    Example (sums of floats may differ in their last bit from those kept at the stop,
    which were added in another order):
        >>> import math
        >>> again, kept = compute_stats(run)["primary"]["det"], run.stats["primary"]["det"]
        >>> again["count"] == kept["count"], math.isclose(again["sum"], kept["sum"])
        (True, True)
    """
    stats = summarise_store(run.store, run.uid)
    if fill:
        for name in run:
            stream = run[name]
            external = [f for f, key in stream.data_keys.items() if key.get("external")]
            if not external or not len(stream):
                continue
            acc = Accumulator()
            data = stream.read(external, fill=True)
            acc.add({"d:" + f: data[f].values for f in external})
            stats.setdefault(name, {}).update(acc.result())
    return stats


def fill_stats(
    catalog: Catalog, fill: bool = False, recompute: bool = False, progress: bool = False
) -> int:
    """Compute and store the statistics of the catalog's stopped runs that lack them
    (``recompute``: of every stopped run); return how many runs were given statistics.
    Running it again does nothing more (unless ``recompute``).

    Example:
        >>> fill_stats(cat)  # every run got its statistics when it stopped
        0
    """
    store = catalog.store
    if not isinstance(store, KeepsStats):
        raise TypeError(
            f"statistics are computed where runs are stored, not through {store!r}: run "
            "runbroker db stats on the catalog's database or folder"
        )
    if recompute:
        uids = list(catalog.search(KeyPresent("stop.uid")))[::-1]
    else:
        uids = store.unsummarised(filled=fill)
    bar = _bar(len(uids)) if progress else None
    try:
        for uid in uids:
            store.set_stats(uid, compute_stats(catalog[uid], fill), filled=fill)
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    return len(uids)


def _bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", desc="stats")


def db_stats(args: argparse.Namespace) -> int:
    """The ``runbroker db stats`` command."""
    from . import opening

    catalog = opening.open(args.uri)
    try:
        done = fill_stats(catalog, args.fill, args.recompute, progress=not args.quiet)
    finally:
        catalog.close()
    print(f"statistics computed for {done} run{'s' * (done != 1)}")
    return 0


def add_command(db: Any) -> None:
    """Add ``stats`` to the ``runbroker db`` subcommands."""
    st = db.add_parser("stats", help="compute per-field statistics of runs that lack them")
    st.add_argument("uri", help="catalog file, folder, URL or name")
    st.add_argument("--fill", action="store_true", help="read file-backed fields (images) too")
    st.add_argument("--recompute", action="store_true", help="every stopped run again")
    st.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=db_stats)
