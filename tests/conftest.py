import os
import tempfile

import pytest

# Ray in tests: no auth prompt, and a private temp dir (its socket paths must stay short).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
os.environ.setdefault("MPLBACKEND", "Agg")


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
