"""constraints.txt, the lock `make` and CI install with, agrees with pyproject.toml:
every dependency is pinned there, at a version its range allows, and torch is left
to the Makefile. A range changed without `make lock` fails here, not on a user."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_every_dependency_is_pinned_within_its_range(req):
    name = canonicalize_name(req.name)
    pins = _pins()
    if name in ("torch", "torchvision"):
        assert name not in pins, "torch is pinned by the Makefile (TORCH), not the lock"
        return
    assert name in pins, f"{req.name} is not in constraints.txt: run make lock"
    assert req.specifier.contains(pins[name], prereleases=True), \
        f"constraints.txt pins {req.name}=={pins[name]}, outside {req}: run make lock"


def test_the_lock_pins_torchs_own_dependencies_at_the_makefiles_torch():
    torch = re.search(r"^TORCH \?= torch==(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert torch, "the Makefile pins torch"
    header = (ROOT / "constraints.txt").read_text()
    assert "make lock" in header and "# torch\n# torchvision" in header
    assert "sympy" in _pins(), "torch's own dependencies are locked too"
