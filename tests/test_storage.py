"""Results at a URI (gs://bucket/prefix in the cloud): checked with pyarrow's local
filesystem through file:// URIs, the same code path, since GCS is not reachable here."""

import pytest

from raytune_ctr import cli, storage
from raytune_ctr.spec import SpecError


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


def test_a_uri_storage_path_keeps_a_local_copy_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir, uri = cli._results_folders(f"file://{tmp_path}/bucket", "s1")
    assert run_dir == tmp_path / cli.LOCAL_RESULTS / "s1" and uri == f"file://{tmp_path}/bucket/s1"
    (tmp_path / "bucket" / "s1").mkdir(parents=True)
    with pytest.raises(SpecError, match=f"results folder file://{tmp_path}/bucket/s1 already"):
        cli._results_folders(f"file://{tmp_path}/bucket", "s1")
    with pytest.raises(SpecError, match="--storage-path: cannot use it"):
        cli._results_folders("nosuchfs://bucket/prefix", "s1")
    assert cli._results_folders(str(tmp_path / "runs"), "s1") == (tmp_path / "runs" / "s1", None)


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
