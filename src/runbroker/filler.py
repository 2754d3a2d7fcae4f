"""The seam between reading a stream and reading the detector data its events point at.

A :class:`~runbroker.stream.Stream` or :class:`~runbroker.catalog.Run` never opens a detector
file. For a file-backed field it names some of its events in the run's own terms -- a
:class:`FieldEvents` -- and asks the catalog's :class:`Filler` for their arrays, for the
references an unfilled read shows, or for where the events cut into files. Each call is about
one field of one run over a range of events, so a filler that asks a server makes one request
per call.

The filler is chosen once, when the catalog is made: a store that can fill by itself (a
server's client) says so with :class:`Fills` and gives its own; any other store gets
:class:`runbroker.assets.LocalFiller`, which reads the files on this machine.

Example:
    >>> import numpy as np
    >>> events = FieldEvents("3c1d", ("d1",), "image", {"external": "STREAM:"}, None,
    ...                      np.arange(1, 6))
    >>> len(events), events[1:3].seq_nums.tolist()
    (5, [2, 3])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["FieldEvents", "Filler", "Fills"]


@dataclasses.dataclass(frozen=True, eq=False)
class FieldEvents:
    """Some events of one file-backed field of one run, as the run names them.

    ``descriptors`` are the uids of the descriptors the events were recorded under (the
    stream's); ``data_key`` is the field's entry in their ``data_keys``; ``refs`` are the
    field's values as the events store them (datum ids, or values stored already filled),
    or None for a ``STREAM:`` field, whose events store nothing; ``seq_nums`` name the events,
    in the order the answer must follow.

    Example:
        >>> import numpy as np
        >>> events = FieldEvents("3c1d", ("d1",), "det", {}, ["a/0", "a/1"], np.array([1, 2]))
        >>> events[:1].refs, len(events)
        (['a/0'], 2)
    """

    run_uid: str
    descriptors: tuple[str, ...]
    field: str
    data_key: Mapping[str, Any]
    refs: Sequence[Any] | None
    seq_nums: np.ndarray

    def __len__(self) -> int:
        return len(self.seq_nums)

    def __getitem__(self, window: slice) -> FieldEvents:
        """The events of ``window`` (a contiguous range of positions)."""
        refs = None if self.refs is None else self.refs[window]
        return dataclasses.replace(self, refs=refs, seq_nums=self.seq_nums[window])


@runtime_checkable
class Filler(Protocol):
    """Reads the detector data of file-backed fields.

    Every method answers for exactly the events it is given, in their order (position ``i``
    of the answer is event ``i`` of ``events``), and raises
    :class:`runbroker.assets.ExternalDataError` naming the run, the field and the file (or
    :class:`~runbroker.assets.HandlerNotFoundError`, :class:`~runbroker.assets.UnsafePathError`)
    when it cannot. A filler is picklable: dask workers get a copy and read on their own.
    """

    def fill(self, events: FieldEvents) -> np.ndarray:
        """The events' arrays stacked along a first axis of ``len(events)``, each shaped as
        ``data_key["shape"]`` declares (a size that differs is an error, never padded)."""
        ...

    def references(self, events: FieldEvents) -> np.ndarray:
        """What an unfilled read shows, an object array of ``len(events)``: the references
        as stored for datum fields, ``"<stream_resource uid>/<row>"`` for ``STREAM:`` fields.
        Fails, as :meth:`fill` would, when the events point at data never recorded."""
        ...

    def cuts(self, events: FieldEvents) -> list[int]:
        """Where the events change file: ``[0, ..., len(events)]``, so that each stretch
        ``events[a:b]`` between two cuts reads one file. Reads no detector data."""
        ...


@runtime_checkable
class Fills(Protocol):
    """A store that fills by itself (it has the files, or asks who has them).

    A catalog over such a store uses ``store.filler()`` instead of reading files locally.
    """

    def filler(self) -> Filler:
        """The filler a catalog over this store reads detector data with."""
        ...
