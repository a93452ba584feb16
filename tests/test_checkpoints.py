"""Old checkpoints emptied, not removed, as Tune takes newer ones (checkpoints.py)."""

import json
from types import SimpleNamespace

from pyarrow import fs
from ray import tune

from raytune_ctr import checkpoints, results, train


def write(folder, epoch):
    folder.mkdir(parents=True)
    files = train.state_files({"epoch": epoch, "history": [{"epoch": e} for e in
                                                           range(1, epoch + 1)]})
    for name, raw in files.items():
        (folder / name).write_bytes(raw)


def listing(trial):
    return {c.name: sorted(p.name for p in c.iterdir()) for c in sorted(trial.iterdir())}


def test_a_trials_older_checkpoints_are_emptied_and_the_newest_is_taken(tmp_path):
    trial = tmp_path / "run" / "trial_a"
    callback, t = checkpoints.Replaced(), SimpleNamespace(trial_id="a")
    whole = sorted(n for n in (results.STATE_FILE, results.HISTORY_FILE))
    # A resumed sweep: the run before left 0 emptied and 1 whole; this driver's first
    # checkpoint of the trial is 2.
    write(trial / "checkpoint_000000", 1)
    checkpoints.empty(fs.LocalFileSystem(), str(trial / "checkpoint_000000"))
    write(trial / "checkpoint_000001", 2)
    (trial / "checkpoint_000004").mkdir()  # an empty stand-in a resume made: it removes it
    for n in (2, 3):
        write(trial / f"checkpoint_{n:06d}", n + 1)
        callback.on_checkpoint(0, [], t, tune.Checkpoint(str(trial / f"checkpoint_{n:06d}")))
    assert listing(trial) == {"checkpoint_000000": ["replaced"], "checkpoint_000001": ["replaced"],
                              "checkpoint_000002": ["replaced"], "checkpoint_000003": whole,
                              "checkpoint_000004": []}
    # Whichever one Tune's record names, or none, the trial goes on from epoch 4.
    for named in (None, "checkpoint_000000", "checkpoint_000003"):
        ckpt = tune.Checkpoint(str(trial / named)) if named else None
        state = results.last_state(ckpt, str(trial))
        assert train.load_state(state)["epoch"] == 4
    assert results.last_state(None, str(tmp_path / "run" / "trial_new")) is None
    assert results.last_state(None) is None
    # A listing that fails is logged, never raised into Tune (it would not record the
    # checkpoint).
    callback.on_checkpoint(0, [], SimpleNamespace(trial_id="b"),
                           tune.Checkpoint(str(tmp_path / "gone" / "checkpoint_000000")))
    callback.on_trial_complete(0, [], t)
    assert list(callback._newest) == ["b"]
    assert json.loads((trial / "checkpoint_000003" / results.HISTORY_FILE).read_text())[-1] \
        == {"epoch": 4}
