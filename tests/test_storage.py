"""Results at a URI (gs://bucket/prefix in the cloud): checked with pyarrow's local
filesystem through file:// URIs, the same code path, since GCS is not reachable here.
And whole_files, the local filesystem Tune writes through: killed writers, failed
writes and half-written records leave the last whole copy."""

import json
import os
import pickle
import select
import subprocess
import sys

import pytest
from pyarrow import fs

from raytune_ctr import storage


def test_upload_copies_the_folder_to_a_uri(tmp_path):
    local = tmp_path / "local" / "s1"
    (local / "plots").mkdir(parents=True)
    (local / "trials.csv").write_text("a,b\n1,2\n")
    (local / "plots" / "pareto.png").write_bytes(b"\x89PNG")
    uri = storage.join(f"file://{tmp_path}/bucket/prefix/", "s1")
    assert uri == f"file://{tmp_path}/bucket/prefix/s1" and storage.is_uri(uri)
    assert not storage.exists(uri)
    storage.upload(local, uri)
    assert storage.exists(uri)
    assert (tmp_path / "bucket/prefix/s1/trials.csv").read_text() == "a,b\n1,2\n"
    assert (tmp_path / "bucket/prefix/s1/plots/pareto.png").read_bytes() == b"\x89PNG"


def test_download_fills_in_a_local_copy_without_overwriting(tmp_path):
    remote = tmp_path / "bucket" / "s1"
    (remote / "train" / "t1" / "epoch_0002").mkdir(parents=True)
    (remote / "train" / "t1" / "epoch_0002" / "history.json").write_text("[]")
    (remote / "spec.yaml").write_text("name: remote\n")
    (remote / "optuna.db").write_text("db")
    local = tmp_path / "results" / "s1"
    local.mkdir(parents=True)
    (local / "spec.yaml").write_text("name: mine\n")
    storage.download(f"file://{remote}", local)
    assert (local / "spec.yaml").read_text() == "name: mine\n"
    assert (local / "optuna.db").read_text() == "db"
    assert not (local / "train").exists()  # checkpoints stay where the trials read them


WRITER = """
import sys, time
from pyarrow import fs
from raytune_ctr import storage
filesystem = storage.whole_files() if sys.argv[1] == "whole" else fs.LocalFileSystem()
f = filesystem.open_output_stream(sys.argv[2])
f.write(b"new state, half written")
print("written", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["whole", "plain"])
def test_a_writer_killed_mid_file_leaves_the_last_whole_copy(tmp_path, how):
    """What a head node lost while Tune copies its record does: through pyarrow's local
    filesystem the file holds only the part written (the CI saw it empty), and Tune
    would start the sweep afresh; through whole_files the last whole copy stays, and
    the part written is a hidden file."""
    state = tmp_path / "experiment_state-x.json"
    state.write_text('{"whole": true}')
    proc = subprocess.Popen([sys.executable, "-c", WRITER, how, str(state)],
                            stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout.readline() == "written\n"
    finally:
        proc.kill()
        proc.wait()
    if how == "whole":
        assert state.read_text() == '{"whole": true}'
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] \
            and all(p.suffix == ".part" for p in tmp_path.iterdir() if p != state)
    else:  # the old copy is gone; what is there is the half written
        assert state.read_bytes() == b"new state, half written"


def test_whole_files_copies_a_folder_and_travels_in_a_pickle(tmp_path):
    src = tmp_path / "src"
    (src / "checkpoint_000001").mkdir(parents=True)
    (src / "checkpoint_000001" / "state.pt").write_bytes(os.urandom(1 << 20))
    (src / "result.json").write_text("{}")
    filesystem = pickle.loads(pickle.dumps(storage.whole_files()))  # as Tune's trials get it
    for _ in range(2):  # new files, then each over the last
        fs.copy_files(str(src), str(tmp_path / "dst"), destination_filesystem=filesystem)
        got = sorted(p.relative_to(tmp_path / "dst").as_posix()
                     for p in (tmp_path / "dst").rglob("*"))
        assert got == ["checkpoint_000001", "checkpoint_000001/state.pt", "result.json"]
        assert (tmp_path / "dst/checkpoint_000001/state.pt").read_bytes() == \
            (src / "checkpoint_000001/state.pt").read_bytes()
        (src / "result.json").write_text('{"epoch": 2}')
    assert (tmp_path / "dst/result.json").read_text() == '{"epoch": 2}'


FULL = """
import resource, signal, sys
from raytune_ctr import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))  # a write past 8 bytes fails: EFBIG
try:
    with storage.whole_files().open_output_stream(sys.argv[1]) as f:
        f.write(b"a new state longer than the disk allows")
except OSError as err:
    print("failed:", err)
"""


def test_a_write_that_fails_leaves_the_last_whole_copy_and_no_part(tmp_path):
    state = tmp_path / "searcher-state-x.pkl"
    state.write_text("whole")
    out = subprocess.run([sys.executable, "-c", FULL, str(state)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.startswith("failed:"), out.stdout + out.stderr
    assert state.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == [state.name]


FULL_COPY = """
import resource, signal, sys
from pyarrow import fs
from raytune_ctr import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
try:
    fs.copy_files(sys.argv[1], sys.argv[2], destination_filesystem=storage.whole_files())
except OSError as err:
    print("failed:", err)
"""


def test_a_copy_that_fails_leaves_the_stored_record_and_no_part(tmp_path):
    """pyarrow drops the stream of a copy that failed without closing it: the part
    written goes all the same."""
    staged, stored = tmp_path / "staged", tmp_path / "stored"
    staged.mkdir()
    stored.mkdir()
    (staged / "experiment_state-s1.json").write_text(json.dumps({"trials": "x" * 5000}))
    (stored / "experiment_state-s1.json").write_text('{"trials": "before"}')
    out = subprocess.run([sys.executable, "-c", FULL_COPY, str(staged), str(stored)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("failed:"), out.stdout + out.stderr
    assert [p.name for p in stored.iterdir()] == ["experiment_state-s1.json"]
    assert (stored / "experiment_state-s1.json").read_text() == '{"trials": "before"}'


def test_a_record_caught_half_written_is_not_stored(tmp_path):
    """Tune rewrites its staging record in place, so a copy can read it half written:
    that copy keeps the last whole one, and a first one that is not whole is not made."""
    staged, stored = tmp_path / "staged", tmp_path / "stored"
    staged.mkdir()
    stored.mkdir()
    (stored / "experiment_state-s1.json").write_text('{"whole": 1}')
    (staged / "experiment_state-s1.json").write_text('{"whole": 2, "tri')
    (staged / "searcher-state-s1.pkl").write_bytes(pickle.dumps({"space": [1, 2]})[:-3])
    (staged / "spec.yaml").write_text("name: x\n")  # not Tune's record: copied as it is
    fs.copy_files(str(staged), str(stored), destination_filesystem=storage.whole_files())
    assert sorted(p.name for p in stored.iterdir()) == ["experiment_state-s1.json", "spec.yaml"]
    assert (stored / "experiment_state-s1.json").read_text() == '{"whole": 1}'
    (staged / "experiment_state-s1.json").write_text('{"whole": 2}')
    (staged / "searcher-state-s1.pkl").write_bytes(pickle.dumps({"space": [1, 2]}))
    fs.copy_files(str(staged), str(stored), destination_filesystem=storage.whole_files())
    assert (stored / "experiment_state-s1.json").read_text() == '{"whole": 2}'
    assert pickle.loads((stored / "searcher-state-s1.pkl").read_bytes()) == {"space": [1, 2]}
