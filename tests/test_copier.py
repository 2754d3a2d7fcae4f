"""The copier processes a pack hands its file copies and checksums to."""

from __future__ import annotations

import hashlib
import os
import signal
import sys

import pytest

from runbroker.pack.copier import Copiers, CopyError


@pytest.mark.parametrize("processes", [2, 0])
def test_copies_and_writes_come_back_with_size_and_sha256(tmp_path, processes):
    data = os.urandom(3 << 20)
    (tmp_path / "a.h5").write_bytes(data)
    os.utime(tmp_path / "a.h5", ns=(1_000_000_000, 2_000_000_000))
    with Copiers(processes) as copiers:
        copied = copiers.copy(str(tmp_path / "a.h5"), str(tmp_path / "out" / "deep" / "a.h5"))
        written = copiers.write(b"[1]\n", str(tmp_path / "stage" / "r"), str(tmp_path / "r"))
        assert copied.result() == (len(data), hashlib.sha256(data).hexdigest())
        assert written.result() == (4, hashlib.sha256(b"[1]\n").hexdigest())
    assert (tmp_path / "out" / "deep" / "a.h5").read_bytes() == data
    assert (tmp_path / "out" / "deep" / "a.h5").stat().st_mtime_ns == 2_000_000_000
    assert (tmp_path / "r").read_bytes() == b"[1]\n"
    assert not (tmp_path / "stage" / "r").exists()
    assert not list((tmp_path / "out" / "deep").glob(".*.tmp"))


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses names not in UTF-8")
def test_names_that_are_not_utf8_survive_the_trip(tmp_path):
    src = os.path.join(os.fsencode(tmp_path), b"caf\xe9.h5")
    with open(src, "wb") as f:
        f.write(b"frames")
    name = os.fsdecode(src)  # a str holding a lone surrogate
    with Copiers(1) as copiers:
        assert copiers.copy(name, name + ".copy").result()[0] == 6
    with open(src + b".copy", "rb") as f:
        assert f.read() == b"frames"


def test_a_file_that_cannot_be_copied_is_named(tmp_path):
    with Copiers(1) as copiers:
        missing = copiers.copy(str(tmp_path / "gone.h5"), str(tmp_path / "copy.h5"))
        with pytest.raises(CopyError, match=r"cannot copy detector file .*gone\.h5: No such file"):
            missing.result()
        # The process goes on with the next request.
        (tmp_path / "here.h5").write_bytes(b"x")
        assert copiers.copy(str(tmp_path / "here.h5"), str(tmp_path / "c.h5")).result()[0] == 1


def test_a_copier_process_that_dies_fails_what_it_was_sent(tmp_path):
    (tmp_path / "a.h5").write_bytes(b"x" * 1000)
    copiers = Copiers(1)
    try:
        assert copiers.copy(str(tmp_path / "a.h5"), str(tmp_path / "b.h5")).result()[0] == 1000
        (worker,) = copiers._workers
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait()
        late = copiers.copy(str(tmp_path / "a.h5"), str(tmp_path / "c.h5"))
        with pytest.raises(CopyError, match=r"the copier process stopped \(exit status -9\)"):
            late.result(timeout=30)
    finally:
        copiers.close()
