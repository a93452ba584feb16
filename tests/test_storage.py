"""Results at a URI (gs://bucket/prefix in the cloud): checked with pyarrow's local
filesystem through file:// URIs, the same code path, since GCS is not reachable here."""

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
