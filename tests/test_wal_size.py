"""The WAL of an SQLite catalog after a large ingest: cut back once checkpointed, so that
later commits do not each owe a blocking checkpoint (the writer judges by the file's size)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from event_model import compose_run

import runbroker
import runbroker.store.dialects as dialects
import runbroker.store.sqlwrite as sqlwrite


def _run(n: int) -> list[tuple[str, dict]]:
    bundle = compose_run(metadata={"plan_name": "wal"})
    keys = {"x": {"source": "sim", "dtype": "number", "shape": []}}
    desc = bundle.compose_descriptor(name="primary", data_keys=keys)
    page = desc.compose_event_page(
        data={"x": [float(i) for i in range(n)]},
        timestamps={"x": [float(i) for i in range(n)]},
        seq_num=list(range(1, n + 1)),
        time=[float(i) for i in range(n)],
    )
    return [
        ("start", bundle.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event_page", page),
        ("stop", bundle.compose_stop()),
    ]


def test_commits_after_a_large_ingest_do_not_each_checkpoint(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # Scaled down: a 1 MB WAL blocks, and a reset WAL is cut back to 64 KB.
    monkeypatch.setattr(sqlwrite, "_WAL_BLOCKING", 2**20)
    monkeypatch.setattr(sqlwrite, "_WAL_BACKGROUND", 2**19)
    monkeypatch.setattr(dialects, "WAL_KEPT", 2**16)
    blocking: list[str] = []
    checkpoint = sqlwrite.SQLWriting._checkpoint

    def counted(self: Any, mode: str) -> None:
        if mode == "RESTART":
            blocking.append(mode)
        checkpoint(self, mode)

    monkeypatch.setattr(sqlwrite.SQLWriting, "_checkpoint", counted)
    cat = runbroker.open(tmp_path / "wal.db", create=True)
    cat.ingest(_run(60_000))  # one large commit: some MB of WAL
    wal = tmp_path / "wal.db-wal"
    assert blocking, "the large ingest owed a blocking checkpoint"
    cat.ingest(_run(2))  # the next commit starts the checkpointed WAL over, and cuts it back
    assert wal.stat().st_size < sqlwrite._WAL_BLOCKING
    blocking.clear()
    cat.ingest(_run(2))
    assert not blocking, "a small commit after a large ingest owed a blocking checkpoint"
    assert len(cat) == 3
    cat.close()
