"""Tier 1 of the user's own code: a model and a dataset by import path, from a `code:`
folder, trained by our loop. Bad input is one line naming the key, before any compute;
the example sweep (experiments/configs/own_model.yaml) runs end to end on real Ray,
its package reaching the trial processes only through `code:`."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from raytune_ctr import checks, cli, data, models, usercode
from raytune_ctr import spec as spec_lib
from raytune_ctr.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent

PACKAGE = {
    "__init__.py": "",
    "nets.py": """
        from torch import nn

        def mlp(config, input_shape):
            return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)),
                                 config["num_classes"]))

        def broken(config, input_shape):
            raise RuntimeError("width must be even")

        def not_a_module(config, input_shape):
            return "a string"

        NOT_CALLABLE = 3
    """,
    "sets.py": """
        import torch
        from torch.utils.data import TensorDataset

        def tensors(config):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 4, generator=g)
            return (x, (x[:, 0] > 0).long()), (x[:16], (x[:16, 0] > 0).long())

        def datasets(config):
            x = torch.randn(40, 3)
            train = TensorDataset(x, torch.arange(40) % 5)
            train.targets = (torch.arange(40) % 5).tolist()
            return train, TensorDataset(x[:8], torch.arange(8) % 5)

        def with_classes(config):
            (tr, te) = tensors(config)
            return tr, te, 7

        def broken(config):
            raise FileNotFoundError("no such file: /data/mine.csv")

        def wrong(config):
            return 42
    """,
}


@pytest.fixture
def code(tmp_path):
    """A package `mine` that exists only in tmp_path (the `code:` folder)."""
    pkg = tmp_path / "code" / "mine"
    pkg.mkdir(parents=True)
    for name, text in PACKAGE.items():
        (pkg / name).write_text(textwrap.dedent(text))
    yield str(tmp_path / "code")
    for m in [m for m in sys.modules if m == "mine" or m.startswith("mine.")]:
        del sys.modules[m]
    if str(tmp_path / "code") in sys.path:
        sys.path.remove(str(tmp_path / "code"))


def _spec(code, **sections):
    return checks.from_dict({"code": code, **sections})


def test_import_paths_and_registry_names_are_told_apart():
    assert usercode.is_path("mine.nets:mlp") and usercode.is_path("a:b.c")
    for name in ("mlp", "mnist_cnn", "hf:distilbert-base-uncased", "a:", ":b", "a b:c"):
        assert not usercode.is_path(name), name


@pytest.mark.parametrize("section,path,fragments", [
    ("train", "nosuch.nets:mlp", ["train.model: cannot import nosuch.nets",
                                  "No module named 'nosuch'", "got 'nosuch.nets:mlp'"]),
    ("train", "mine.nets:nope", ["train.model: mine.nets has no nope"]),
    ("train", "mine.nets:NOT_CALLABLE", ["train.model: NOT_CALLABLE is not callable"]),
    ("data", "mine.sets:nope", ["data.dataset: mine.sets has no nope"]),
    ("data", "nosuch:build", ["data.dataset: cannot import nosuch"]),
])
def test_an_import_path_that_does_not_resolve_is_one_line_naming_the_key(code, section, path,
                                                                           fragments):
    key = {"train": "model", "data": "dataset"}[section]
    other = {"data": {"dataset": "mine.sets:tensors"}} if section == "train" else {
        "train": {"model": "mine.nets:mlp"}}
    with pytest.raises(SpecError) as err:
        _spec(code, **{section: {key: path}}, **other)
    msg = str(err.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_code_must_be_a_folder(tmp_path):
    with pytest.raises(SpecError, match=r"^code: is not a folder, got '.*nowhere'$"):
        _spec(str(tmp_path / "nowhere"), train={"model": "mine.nets:mlp"})


def test_without_code_the_package_does_not_import(code):
    with pytest.raises(SpecError, match="cannot import mine"):
        checks.from_dict({"train": {"model": "mine.nets:mlp"}})


@pytest.mark.parametrize("factory,classes,shape,kind", [
    ("tensors", 2, (4,), data.TensorSet),
    ("datasets", 5, (3,), torch.utils.data.TensorDataset),
    ("with_classes", 7, (4,), data.TensorSet),
])
def test_a_dataset_factory_gives_tensors_or_datasets(code, tmp_path, factory, classes, shape,
                                                     kind):
    s = _spec(code, data={"dataset": f"mine.sets:{factory}", "data_dir": str(tmp_path / "d")},
              train={"model": "mine.nets:mlp"})
    ds = data.load(s.data)
    assert (ds.num_classes, ds.input_shape) == (classes, shape)
    assert isinstance(ds.train, kind)
    net = models.build(s.train.model, ds.input_shape, ds.num_classes, config={"lr": 1.0})
    assert net(torch.zeros(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("train,dataset,fragments", [
    ("mine.nets:broken", "mine.sets:tensors",
     ["train.model: mine.nets:broken raised RuntimeError: width must be even"]),
    ("mine.nets:not_a_module", "mine.sets:tensors",
     ["train.model: mine.nets:not_a_module returned str, not a torch.nn.Module"]),
    ("mine.nets:mlp", "mine.sets:broken",
     ["data.dataset: mine.sets:broken raised FileNotFoundError: no such file: /data/mine.csv"]),
    ("mine.nets:mlp", "mine.sets:wrong",
     ["data.dataset: mine.sets:wrong must return (train, test) or (train, test, num_classes)"]),
])
def test_a_factory_that_fails_is_refused_before_ray_starts(code, tmp_path, capsys, train,
                                                           dataset, fragments):
    cfg = tmp_path / "spec.yaml"
    spec_lib.dump(_spec(code, train={"model": train},
                        data={"dataset": dataset, "data_dir": str(tmp_path / "d")}), cfg)
    out = tmp_path / "results"
    rc = cli.sweep_main(["--config", str(cfg), "--storage-path", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    for f in fragments:
        assert f in last, last
    assert not out.exists()
    import ray

    assert not ray.is_initialized()  # refused before any compute


@pytest.mark.ray
def test_the_tier1_example_sweeps_end_to_end(tmp_path):
    """experiments/configs/own_model.yaml: its package is on no import path of the
    trial processes but the one `code:` gives them."""
    env = os.environ | {"RAY_TMPDIR": os.environ.get("RAY_TMPDIR", str(tmp_path / "ray"))}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "experiments/sweep.py", "--config", "experiments/configs/own_model.yaml",
         "--storage-path", str(tmp_path / "out"), "--name", "own"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "out" / "own"
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    df = pd.read_parquet(run / "trials.parquet")
    assert (df["status"] == "COMPLETED").all() and df["trial_index"].nunique() == 4
    assert (df["model"] == "tabular.nets:mlp").all()
    # Our loop's figures, as for a built-in model.
    assert df["flops_per_sample"].gt(0).all() and df["samples_per_s"].gt(0).all()
    assert df["test_acc"].max() > 90
    assert "Fastest configuration reaching" in (run / "report.md").read_text()


def test_hugging_face_names_are_not_import_paths():
    for name in ("hf:gpt2", "hf:distilgpt2", "hf:models"):
        assert not usercode.is_path(name), name


@pytest.mark.parametrize("factory,fragment", [
    ("empty", "returned an empty split"),
    ("bad_classes", "num_classes must be an int above 1, not None"),
    ("strings", "train is not numeric tensors"),
])
def test_a_dataset_factorys_odd_return_is_one_line(code, tmp_path, factory, fragment):
    (Path(code) / "mine" / "odd.py").write_text(textwrap.dedent("""
        import torch

        def empty(config):
            return (torch.zeros(0, 2), torch.zeros(0)), (torch.zeros(1, 2), torch.zeros(1))

        def bad_classes(config):
            x = torch.zeros(4, 2)
            return (x, torch.zeros(4)), (x, torch.zeros(4)), None

        def strings(config):
            return (["a", "b"], ["c", "d"]), (["a"], ["c"])
    """))
    s = _spec(code, data={"dataset": f"mine.odd:{factory}", "data_dir": str(tmp_path / "d")},
              train={"model": "mine.nets:mlp"})
    with pytest.raises(SpecError, match="^data.dataset: ") as err:
        data.load(s.data)
    assert fragment in str(err.value), str(err.value)


def test_a_results_folder_reads_without_the_users_code(code, tmp_path):
    """report and compare read a saved spec where the code is not (another machine,
    a copied folder); it is resolved only when the sweep runs (--resume)."""
    s = _spec(code, train={"model": "mine.nets:mlp"}, data={"dataset": "mine.sets:tensors"})
    spec_lib.dump(s, tmp_path / "spec.yaml")
    gone = tmp_path / "elsewhere"
    text = (tmp_path / "spec.yaml").read_text().replace(code, str(gone))
    (tmp_path / "spec.yaml").write_text(text)
    for m in [m for m in sys.modules if m == "mine" or m.startswith("mine.")]:
        del sys.modules[m]
    sys.path.remove(code)
    again = spec_lib.load(tmp_path / "spec.yaml", saved=True)
    assert again.train.model == "mine.nets:mlp"
    with pytest.raises(SpecError, match="code: is not a folder"):
        checks.load(tmp_path / "spec.yaml")
