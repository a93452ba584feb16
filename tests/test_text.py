"""Study S4's text workload offline: a random-weight DistilBERT with a locally built
tokenizer, on generated sentence pairs in GLUE's MRPC layout, through the same
data registry and training loop as the image models."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason='the nlp extra: pip install -e ".[nlp]"')

from raytune_ctr import data, text  # noqa: E402
from raytune_ctr.spec import DataSpec, ResourceSpec, TrainSpec  # noqa: E402
from raytune_ctr.train import Context, fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return folder, text.make_tiny(folder)


def test_pairs_are_tokenized_once_and_cached(tmp_path):
    folder, model = tmp_path, text.make_tiny(tmp_path)  # its own: it rewrites the data
    spec = DataSpec(dataset="glue-mrpc", data_dir=str(folder))
    a = data.load(spec, data.Tokenize(str(model), 24))
    assert a.input_shape == (2, 24) and a.num_classes == 2
    assert a.train.x.shape == (2048, 2, 24) and a.train.x.dtype == torch.int64
    assert a.source == str(folder / "glue-mrpc")
    cached = list((folder / "glue-mrpc").glob("tokenized-*.pt"))
    assert len(cached) == 1
    b = data.load(spec, data.Tokenize(str(model), 24))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    # Row 0 holds [CLS] first sentence [SEP] second [SEP], then padding; the mask marks it.
    ids, mask = a.train.x[0]
    assert ids[0] == 2 and (ids == 3).sum() == 2 and mask.sum() == (ids != 0).sum()
    data.load(spec, data.Tokenize(str(model), 40))  # another length is another cache entry
    assert len(list((folder / "glue-mrpc").glob("tokenized-*.pt"))) == 2
    dev = folder / "glue-mrpc" / "dev.tsv"
    dev.write_text("\n".join(dev.read_text().splitlines()[:101]) + "\n")  # new data: 100 pairs
    assert len(data.load(spec, data.Tokenize(str(model), 24)).test) == 100


def test_tiny_distilbert_trains_through_the_one_loop(tiny):
    folder, model = tiny
    spec = TrainSpec(model=f"hf:{model}", epochs=3, batch_size=32, optimizer="adamw", lr=3e-3,
                     lr_schedule="linear", max_seq_length=32, test_batch_size=64)
    hist = fit(DataSpec(dataset="glue-mrpc", data_dir=str(folder)), spec)
    last = hist[-1]
    assert [m["epoch"] for m in hist] == [1, 2, 3]
    assert 0 <= last["test_f1"] <= 100 and 0 <= last["test_acc"] <= 100
    # The generated task is learnable (reordered words against another sentence):
    # 82% after 3 epochs when measured; chance is about 50%.
    assert last["train_loss"] < hist[0]["train_loss"] and last["test_acc"] > 70
    assert last["peak_memory_mb"] == last["peak_rss_mb"] > 100  # on a CPU: host memory
    assert last["flops_per_sample"] > 0


def test_f1_counts_the_positive_class(tiny):
    """Recomputed by hand from the model's predictions, the reported F1 agrees."""
    folder, model = tiny
    spec = TrainSpec(model=f"hf:{model}", epochs=1, batch_size=64, optimizer="adamw", lr=1e-3,
                     lr_schedule="none", max_seq_length=24)
    d = DataSpec(dataset="glue-mrpc", data_dir=str(folder))
    seen = {}
    m = fit(d, spec, ctx=Context(report=lambda metrics, state: seen.update(state=state)))[0]
    from raytune_ctr import models

    ds = data.load(d, data.Tokenize(str(model), 24))
    net = models.build(spec.model, ds.input_shape, 2)
    net.load_state_dict(seen["state"]["model"])
    net.eval()
    with torch.no_grad():
        pred = net(ds.test.x).argmax(1)
    y = ds.test.y
    tp = ((pred == 1) & (y == 1)).sum().item()
    f1 = 100 * 2 * tp / ((pred == 1).sum().item() + (y == 1).sum().item())
    assert m["test_f1"] == pytest.approx(f1)
    assert m["test_acc"] == pytest.approx(100 * (pred == y).float().mean().item())


def test_over_the_memory_limit_is_out_of_memory_not_a_silent_kill(tiny):
    folder, model = tiny
    spec = TrainSpec(model=f"hf:{model}", epochs=1, max_seq_length=24, optimizer="adamw",
                     lr=1e-3)
    with pytest.raises(MemoryError, match=r"out of memory: peak RSS \d+ MB is over "
                       r"resources.max_memory_gb \(0.01 GB per worker\)"):
        fit(DataSpec(dataset="glue-mrpc", data_dir=str(folder)), spec,
            ResourceSpec(max_memory_gb=0.01))


def sweep_offline(*args, hf_home):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    return subprocess.run([sys.executable, "experiments/sweep.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)


def test_offline_without_cached_weights_says_what_to_download(write_spec, tmp_path, tiny):
    folder, _ = tiny
    spec = write_spec({"data": {"dataset": "glue-mrpc", "data_dir": str(folder)},
                       "train": {"model": "distilbert-base-uncased"}})
    proc = sweep_offline("--config", spec, "--storage-path", tmp_path / "res",
                         hf_home=tmp_path / "hf")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: distilbert-base-uncased: not in the Hugging Face cache (")
    assert f"{tmp_path / 'hf'}, set by HF_HOME" in last and "hf download distilbert-base-uncased" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "res").exists()


def test_offline_without_mrpc_says_where_it_looked(write_spec, tmp_path, tiny):
    _, model = tiny
    spec = write_spec({"data": {"dataset": "glue-mrpc", "data_dir": str(tmp_path / "empty")},
                       "train": {"model": f"hf:{model}"}})
    proc = sweep_offline("--config", spec, "--storage-path", tmp_path / "res",
                         hf_home=tmp_path / "hf")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: GLUE MRPC: not in {tmp_path / 'empty' / 'glue-mrpc'} "
                           "(train.tsv, dev.tsv) nor in the Hugging Face datasets cache")
    assert "datasets.load_dataset('nyu-mll/glue', 'mrpc')" in last


def test_a_text_dataset_needs_a_text_model(write_spec, tmp_path):
    spec = write_spec({"data": {"dataset": "glue-mrpc"}, "train": {"model": "mlp"}})
    proc = sweep_offline("--config", spec, hf_home=tmp_path / "hf")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: train.model: a text dataset (glue-mrpc) needs a text model, got 'mlp'")


@pytest.mark.ray
def test_tiny_s4_sweep_reports_peak_memory_and_fails_the_over_limit_trial(write_spec, tmp_path,
                                                                         tiny):
    """The S4 study in small, end to end on real Ray: two objectives (accuracy, peak
    memory), and a trial whose worker goes over max_memory_gb is FAILED, out of memory."""
    folder, model = tiny
    spec = write_spec({
        "name": "s4-tiny",
        "data": {"dataset": "glue-mrpc", "data_dir": str(folder)},
        "train": {"model": f"hf:{model}", "epochs": 2, "batch_size": 32, "optimizer": "adamw",
                  "lr": 3e-3, "lr_schedule": "linear"},
        "resources": {"max_memory_gb": 4.0},
        "search": {"method": "grid", "max_failures": 0,
                   "objectives": {"test_acc": "max", "peak_memory_mb": "min"},
                   "points": [{"max_seq_length": 32}, {"max_seq_length": 64},
                              {"max_seq_length": 32, "max_memory_gb": 0.1}]},
        "report": {"target_acc": 50.0},
    })
    proc = subprocess.run([sys.executable, "experiments/sweep.py", "--config", spec,
                           "--storage-path", tmp_path / "res", "--name", "s4"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "res" / "s4"
    import pandas as pd

    df = pd.read_parquet(run / "trials.parquet").sort_values(["trial_index", "epoch"])
    status = df.groupby("trial_index")["status"].first().tolist()
    assert status == ["COMPLETED", "COMPLETED", "FAILED"]
    over = df[df["trial_index"] == 2]
    assert "MemoryError: out of memory: peak RSS" in over["error"].iloc[0]
    assert over["test_acc"].isna().all()
    ok = df[df["status"] == "COMPLETED"]
    assert (ok["peak_memory_mb"] > 100).all() and ok["test_f1"].notna().all()
    text_md = (run / "report.md").read_text()
    assert "peak memory MiB" in text_md and "out of memory" in text_md
