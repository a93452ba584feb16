import os
import tempfile

import pytest

# Ray in tests: no auth prompt, and a private temp dir (its socket paths must stay short).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def journal():
    """journal(folder): the Optuna study a results folder keeps, opened as a user would."""
    import optuna

    return lambda folder: optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return str(d)


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec mapping to YAML and return its path."""
    import yaml

    def write(mapping, name="spec.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(mapping) if not isinstance(mapping, str) else mapping)
        return path

    return write


@pytest.fixture
def write_idx():
    """write_idx(folder, images, labels, gz): the four MNIST-format (IDX) files, with
    train = test = images, as Fashion-MNIST ships them."""
    import gzip

    import numpy as np

    def write(folder, images, labels, gz: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        n, h, w = images.shape
        img = (b"\x00\x00\x08\x03" + np.array([n, h, w], ">i4").tobytes()
               + images.astype(np.uint8).tobytes())
        lab = b"\x00\x00\x08\x01" + np.array([n], ">i4").tobytes() + labels.astype(np.uint8).tobytes()
        for split in ("train", "t10k"):
            for stem, body in ((f"{split}-images-idx3-ubyte", img),
                               (f"{split}-labels-idx1-ubyte", lab)):
                if gz:
                    with gzip.open(folder / f"{stem}.gz", "wb") as f:
                        f.write(body)
                else:
                    (folder / stem).write_bytes(body)

    return write


@pytest.fixture(scope="session")
def mount_namespace():
    """mount_namespace(script, timeout): run a bash script in a mount namespace of its
    own (unshare -m), where it may mount a small tmpfs or remount a folder read-only
    without touching the machine's mounts. Skips, saying why, where that is not allowed."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here (util-linux)")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot mount in a mount namespace here: {probe.stderr.strip()}")

    def run(script: str, timeout: float = 600):
        return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                              capture_output=True, text=True, timeout=timeout,
                              env=os.environ.copy())
    return run
