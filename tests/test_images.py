"""The CPU image, with a real Docker engine (marker `docker`).

Builds the image from images/Dockerfile when the offline inputs exist (`bash
images/build.sh` makes them); skips, saying why, when no engine answers and no
image can be had.
"""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
IMAGE = os.environ.get("RAYTUNE_CTR_TEST_IMAGE", "raytune-ctr:latest")
BASE = "raytune-base:bookworm"  # images/base.sh
ROOT = Path(__file__).resolve().parent.parent
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def docker(*args, timeout=600):
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image():
    """The image, built from the real Dockerfile when the offline inputs are here
    (layer cache makes a rebuild of unchanged sources take seconds)."""
    try:
        if docker("info", timeout=20).returncode != 0:
            pytest.skip("no Docker engine answers (apt-get install docker.io; dockerd &)")
    except (FileNotFoundError, subprocess.TimeoutExpired):
        pytest.skip("no docker client or engine")
    wheels = list((ROOT / "images" / "wheelhouse").glob("*.whl"))
    if wheels and docker("image", "inspect", BASE).returncode == 0:
        built = docker("build", "-q", "-f", "images/Dockerfile", "--build-arg", f"BASE={BASE}",
                       "-t", IMAGE, str(ROOT), timeout=1800)
        assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    elif docker("image", "inspect", IMAGE).returncode != 0:
        pytest.skip(f"image {IMAGE} not built, and no {BASE} + images/wheelhouse to build it "
                    "(bash images/build.sh)")
    return IMAGE


def test_image_runs_as_non_root_and_stays_small(image):
    user = docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip()
    assert user == "ray"
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout.strip())
    assert size < 2 * 1000**3, f"{size / 1e9:.2f} GB"


def test_no_wheelhouse_or_host_ca_bundle_in_the_image(image):
    proc = docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                  "ls /tmp/wheels 2>/dev/null; find /opt /tmp /app -name 'torch-*.whl';"
                  " cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null")
    assert proc.returncode == 0
    head, _, bundle = proc.stdout.partition("-----BEGIN")
    assert head.strip() == ""  # the build stage's wheels stayed there
    if HOST_CA.is_file() and bundle:
        ours = hashlib.sha256(HOST_CA.read_bytes()).hexdigest()
        theirs = hashlib.sha256(("-----BEGIN" + bundle).encode()).hexdigest()
        assert ours != theirs, "the host's CA bundle reached the image"


def test_smoke_sweep_in_the_container(image, tmp_path):
    tmp_path.chmod(0o777)  # the image's user (uid 1000) writes the results
    proc = docker("run", "--rm", "--shm-size=1g", "-v", f"{tmp_path}:/data", image,
                  "--smoke", "--storage-path", "/data/results", "--name", "smoke")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "results" / "smoke"
    assert (out / "report.md").is_file()
    import pandas as pd

    df = pd.read_parquet(out / "trials.parquet")
    assert (df["status"] == "COMPLETED").all()
    assert (df["env_image"] != "native").all()  # the fingerprint names the image
