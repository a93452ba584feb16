"""The sweep spec: one YAML file describes one study.

A spec is four frozen dataclasses (data, train, resources, search) plus the
report's settings, validated when loaded. Every default is written down once,
here. Experiment files list only what they change.

    name: s1_batch_lr
    data: {dataset: fashion-mnist}
    train: {model: mnist_cnn, epochs: 5, optimizer: adadelta, lr: 1.0}
    search:
      method: grid
      points: [{batch_size: 32, lr: 1.0}, {batch_size: 64, lr: 1.0}]

Any field of `train` or `resources` can be a search dimension; `cost` holds the
node prices, fixed for the sweep. Bad input raises `SpecError` with one line naming the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic import ValidationError as _PydanticError
from pydantic.dataclasses import dataclass

from raytune_ctr import output, usercode
from raytune_ctr.errors import SpecError, from_pydantic
from raytune_ctr.metrics import CLOCKS, HIGHER, LOWER, METRICS, unmeasurable

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# No inf or nan anywhere: `lr: .inf` is a typo, not a study.
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; more is a wrong file
PositiveInt = Annotated[StrictInt, Field(gt=0)]
PositiveFloat = Annotated[StrictFloat, Field(gt=0)]
NonNegativeFloat = Annotated[StrictFloat, Field(ge=0)]



def folder_name(name: str) -> str:
    """A sweep's name is its results folder's name: one plain path part, safe in a
    URI and in the Optuna database's URL too (no '?', '#', '%')."""
    if name in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._+=,-]+", name):
        raise ValueError("must be a plain folder name (letters, digits and . _ - + = , "
                         "only; not '.' or '..')")
    return name


FolderName = Annotated[StrictStr, AfterValidator(folder_name)]

DEFAULT_DATA_DIR = os.environ.get("RAYTUNE_CTR_DATA", "~/.cache/raytune_ctr/data")


@dataclass(frozen=True, config=_STRICT)
class DataSpec:
    dataset: StrictStr = "digits"
    data_dir: StrictStr = DEFAULT_DATA_DIR
    download: StrictBool = True
    # Cap on training samples (None = all); smoke runs use it.
    subset: PositiveInt | None = None
    # synthetic / image-folder only
    image_size: PositiveInt | None = None
    channels: PositiveInt = 3
    num_classes: PositiveInt = 10
    num_samples: PositiveInt = 4096
    # DataLoader processes for on-disk image datasets; in-memory sets need none.
    loader_workers: Annotated[StrictInt, Field(ge=0)] = 0
    # Hold an in-memory set on the GPU and batch it there (no DataLoader, no copies).
    # auto: on CUDA when it takes under half the free GPU memory.
    data_on_device: Literal["auto"] | StrictBool = "auto"


@dataclass(frozen=True, config=_STRICT)
class TrainSpec:
    model: StrictStr = "mnist_cnn"
    # Tier 2: the user's own training function ("mypkg.train:run"), run in its own
    # process (torchrun for several workers); it calls raytune_ctr.report per epoch.
    function: StrictStr | None = None
    hidden: tuple[PositiveInt, ...] = (100,)  # mlp only
    epochs: PositiveInt = 5
    # Global batch per step, split across Train workers (Ray's examples' convention),
    # so adding workers changes parallelism, not the recipe.
    batch_size: PositiveInt = 64
    test_batch_size: PositiveInt = 1000
    lr: PositiveFloat = 1.0
    optimizer: Literal["adadelta", "sgd", "adam", "adamw"] = "adadelta"
    momentum: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.9  # sgd only
    weight_decay: Annotated[StrictFloat, Field(ge=0)] = 0.0
    # linear: decay to 0 over the run, per step (Hugging Face's default for fine-tuning)
    lr_schedule: Literal["step", "onecycle", "linear", "none"] = "step"
    gamma: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.7  # StepLR, per epoch (pytorch/examples)
    seed: Annotated[StrictInt, Field(ge=0)] = 1
    # Text models: tokens per sentence pair (truncated or padded to it).
    max_seq_length: PositiveInt = 128
    # Deterministic kernels (torch.use_deterministic_algorithms), so a rerun with the
    # same seed gives bit-identical metrics; an Optuna search then runs one trial at
    # a time, because TPE's next suggestion depends on the order results arrive in.
    deterministic: StrictBool = False
    # The fast path: bf16 autocast, channels_last for conv nets (auto: on CUDA),
    # torch.compile (compiled during set-up, outside train time).
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: Literal["auto"] | StrictBool = "auto"
    compile: StrictBool = False


@dataclass(frozen=True, config=_STRICT)
class ResourceSpec:
    num_workers: PositiveInt = 1
    use_gpu: StrictBool = False
    # CPUs per Train worker (default 1), or the CPUs of the whole trial, split over
    # its workers: with cpus_per_trial, trials with more workers get the same
    # hardware, so num_workers compares DDP workers against threads (study S5).
    cpus_per_worker: PositiveFloat | None = None
    cpus_per_trial: PositiveFloat | None = None
    gpus_per_worker: PositiveFloat = 1.0
    # torch intra-op threads per worker; None = the worker's whole CPUs, at least 1.
    threads_per_worker: PositiveInt | None = None
    # Peak TFLOP/s of one worker's device, for MFU; default: the known-GPU table.
    peak_tflops: PositiveFloat | None = None
    # Host memory per Train worker: Ray reserves it when scheduling, and a worker whose
    # peak RSS goes over it fails the trial with "out of memory". None: no limit.
    max_memory_gb: PositiveFloat | None = None
    # Tiers 2 and 3: run the trial's process in the project's image (docker run) rather
    # than natively: the container-against-native knob, for any script.
    container: StrictBool = False

    @property
    def worker_cpus(self) -> float:
        """The CPUs each Train worker holds."""
        if self.cpus_per_trial is not None:
            return self.cpus_per_trial / self.num_workers
        return self.cpus_per_worker if self.cpus_per_worker is not None else 1.0

    @property
    def threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.worker_cpus))


@dataclass(frozen=True, config=_STRICT)
class CostSpec:
    """What the nodes cost, for cost_usd: a node's price per hour, {cpu: …, gpu: …},
    on demand and on the spot/preemptible market, and the size those prices buy. A
    trial pays its share of a node (GPU trials: GPUs / node_gpus, whose price covers
    the node's CPUs; CPU trials: CPUs / node_cpus) for its wall_time_s. No price: no
    cost_usd. Fixed for a sweep: prices describe the cluster, not a trial."""

    node_hour_usd: dict[Literal["cpu", "gpu"], NonNegativeFloat] = dataclasses.field(
        default_factory=dict)
    spot_node_hour_usd: dict[Literal["cpu", "gpu"], NonNegativeFloat] = dataclasses.field(
        default_factory=dict)
    market: Literal["on_demand", "spot"] = "on_demand"
    node_cpus: PositiveFloat | None = None
    node_gpus: PositiveFloat | None = None


def hour_usd(res: ResourceSpec, cost: CostSpec) -> float | None:
    """What an hour of a trial's share of a node costs; None without a price."""
    prices = cost.spot_node_hour_usd if cost.market == "spot" else cost.node_hour_usd
    kind = "gpu" if res.use_gpu else "cpu"
    if kind not in prices:
        return None
    size = cost.node_gpus if res.use_gpu else cost.node_cpus
    held = res.num_workers * (res.gpus_per_worker if res.use_gpu else res.worker_cpus)
    assert size is not None  # _check_prices requires it with a price
    return prices[kind] * held / size


@dataclass(frozen=True, config=_STRICT)
class Dimension:
    """One search dimension; exactly one field is set. Bounds are inclusive."""

    choice: tuple[Any, ...] | None = None
    uniform: tuple[StrictFloat, StrictFloat] | None = None
    loguniform: tuple[PositiveFloat, PositiveFloat] | None = None
    randint: tuple[StrictInt, StrictInt] | None = None

    @property
    def kind(self) -> str:
        return next(f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    @property
    def args(self) -> tuple:
        return getattr(self, self.kind)

    def extremes(self) -> tuple:
        """The values that bound this dimension, for validation and resource planning."""
        return self.args if self.kind == "choice" else (self.args[0], self.args[1])


@dataclass(frozen=True, config=_STRICT)
class AshaSpec:
    # "epoch" counts epochs; "train_time_s" counts compute seconds, which judges
    # trials with different batch sizes or worker counts fairly.
    time_attr: Literal["epoch", "train_time_s"] = "epoch"
    max_t: PositiveFloat | None = None  # default: the largest epochs (needed for seconds)
    grace_period: PositiveFloat = 1.0
    reduction_factor: Annotated[StrictFloat, Field(gt=1)] = 2.0


@dataclass(frozen=True, config=_STRICT)
class BudgetSpec:
    """Target mode's budget: train seconds or dollars (cost_usd) summed over trials,
    at which the sweep ends; trials: the search's (default: search.num_samples),
    after which the finalist race adds its reruns."""

    trial_seconds: PositiveFloat | None = None
    usd: PositiveFloat | None = None
    trials: PositiveInt | None = None


@dataclass(frozen=True, config=_STRICT)
class FinalistSpec:
    """Target mode's finalist race: the trials within `within` of the best time to
    target run again with more seeds, until P(the answer is faster than the
    runner-up) reaches `confidence` or the seeds run out."""

    within: NonNegativeFloat = 0.25
    seeds: tuple[PositiveInt, ...] = (3, 5)  # seeds per finalist, in rounds
    confidence: Annotated[StrictFloat, Field(gt=0.5, lt=1)] = 0.9


@dataclass(frozen=True, config=_STRICT)
class GoalSpec:
    """Target mode (target.py): the configuration that reaches `target`, e.g.
    {test_acc: 95}, in the least `minimize` (train_time_s, wall_time_s or cost_usd)."""

    target: dict[StrictStr, StrictFloat]
    minimize: StrictStr = "train_time_s"
    budget: BudgetSpec = BudgetSpec()
    # Capping's margin m: a trial stops once it cannot beat the best time x (1 + m).
    # 0.3: a seed's time to target is within 29% of its configuration's median in 9
    # of 10 runs, measured on S1's grid x 3 seeds (docs/benchmarks.md, target mode).
    margin: NonNegativeFloat = 0.3
    # One evaluation this far beyond the target confirms itself; else the next one
    # must be at or beyond it too (in the metric's unit: points of accuracy).
    confirm: NonNegativeFloat = 1.0
    full_runs: StrictBool = False  # a trial that reached the target trains on
    finalists: FinalistSpec | None = FinalistSpec()  # null: no race


@dataclass(frozen=True, config=_STRICT)
class SearchSpec:
    method: Literal["grid", "random", "optuna"] = "grid"
    # metric -> "max" | "min"; the first one drives ASHA. Two or more make Optuna
    # use NSGA-II instead of TPE.
    objectives: dict[StrictStr, Literal["max", "min"]] = dataclasses.field(
        default_factory=lambda: {"test_acc": "max"}
    )
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaSpec = AshaSpec()
    # grid: repeats of every point; random/optuna: number of trials.
    num_samples: PositiveInt = 1
    max_concurrent: PositiveInt | None = None
    # Times a trial's Train run restarts from its last checkpoint after a worker
    # fails (Ray's FailureConfig.max_failures; -1 = no limit). Any worker error
    # counts, so a deterministic one (NaN loss) is also tried again, then FAILED.
    max_failures: Annotated[StrictInt, Field(ge=-1)] = 1
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    space: dict[StrictStr, Dimension] = dataclasses.field(default_factory=dict)  # random/optuna
    grid: dict[StrictStr, tuple[Any, ...]] = dataclasses.field(default_factory=dict)  # grid only
    # Explicit configurations: the grid's extra points, or the searcher's first trials.
    points: tuple[dict[StrictStr, Any], ...] = ()
    # Target mode: race to a threshold instead of ranking on `objectives`.
    goal: GoalSpec | None = None


@dataclass(frozen=True, config=_STRICT)
class ScriptSpec:
    """Tier 3: the user's unmodified script. `command` names spec fields in braces;
    each metric is a regular expression with a group `value`, or `correct` and
    `total` (a percentage from exact counts); a line the first metric matches ends
    an epoch. script.py runs it; docs/own-code.md says what it measures."""

    command: StrictStr
    metrics: dict[StrictStr, StrictStr]
    # The working folder; default: the spec's `code:` folder.
    folder: StrictStr | None = None
    # Lines the script prints, to test the metrics against before anything runs.
    sample: Annotated[tuple[StrictStr, ...], BeforeValidator(
        lambda v: (v,) if isinstance(v, str) else v)] = ()
    # The image resources.container runs it in.
    image: StrictStr = "raytune-ctr:latest"


@dataclass(frozen=True, config=_STRICT)
class ReportSpec:
    target_acc: Annotated[StrictFloat, Field(ge=0, le=100)] = 90.0  # percent
    # The config the speedup column compares against, e.g. {batch_size: 64}; default: first.
    baseline: dict[StrictStr, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True, config=_STRICT)
class Spec:
    name: FolderName = "sweep"
    description: StrictStr = ""
    # A folder of the user's own code (train.model / data.dataset as module:factory):
    # on the driver's import path, and shipped to every node (Ray's working_dir).
    code: StrictStr | None = None
    script: ScriptSpec | None = None
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    resources: ResourceSpec = ResourceSpec()
    cost: CostSpec = CostSpec()
    search: SearchSpec = SearchSpec()
    report: ReportSpec = ReportSpec()

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @property
    def runner(self) -> Literal["loop", "function", "script"]:
        """Who trains: our loop (tier 1), the user's function (2) or script (3)."""
        if self.script is not None:
            return "script"
        return "function" if self.train.function is not None else "loop"

    def searched_keys(self) -> list[str]:
        s = self.search
        keys = list(s.space) + list(s.grid)
        keys += [k for p in s.points for k in p]
        return list(dict.fromkeys(keys))

    def grid_points(self) -> list[dict]:
        """Every configuration a grid search runs: the product of `grid`, then `points`."""
        s = self.search
        names = list(s.grid)
        product = [dict(zip(names, values, strict=True)) for values in itertools.product(*s.grid.values())]
        points = [p for p in product if p] + [dict(p) for p in s.points]
        return points or [{}]

    def trial_values(self, point: dict, keys) -> dict:
        """The fields `keys` of the trial at `point`, as the fields hold them (1 is 1.0
        for a float, a list is a tuple)."""
        return values(*self.resolve(point), keys)

    def resolve(self, overrides: dict) -> tuple[TrainSpec, ResourceSpec]:
        """The train and resource specs of one trial."""
        train_keys = {f.name for f in dataclasses.fields(TrainSpec)}
        t = {k: v for k, v in overrides.items() if k in train_keys}
        r = {k: v for k, v in overrides.items() if k not in train_keys}
        return dataclasses.replace(self.train, **t), dataclasses.replace(self.resources, **r)


SEARCHABLE = {f.name: TrainSpec for f in dataclasses.fields(TrainSpec)} | {
    f.name: ResourceSpec for f in dataclasses.fields(ResourceSpec)}


def values(train: TrainSpec, res: ResourceSpec, keys) -> dict:
    """The fields `keys` of one trial, from its train or resources spec."""
    return {k: getattr(train if SEARCHABLE[k] is TrainSpec else res, k) for k in keys}


def trial_fields(train: TrainSpec, res: ResourceSpec) -> dict:
    """What a script's placeholders and a training function see: every train and
    resources field of the trial, as JSON has them (lists, not tuples)."""
    return json.loads(json.dumps(dataclasses.asdict(train) | dataclasses.asdict(res)))


def _plain(obj):
    """Tuples to lists, so the saved YAML reads like the input."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


_SECTIONS: dict[str, type[DataclassInstance]] = {
    "data": DataSpec, "train": TrainSpec, "resources": ResourceSpec, "cost": CostSpec,
    "search": SearchSpec, "report": ReportSpec, "asha": AshaSpec, "script": ScriptSpec,
    "goal": GoalSpec, "budget": BudgetSpec, "finalists": FinalistSpec}


def _known(loc: tuple) -> list[str]:
    """The keys of the section at a key path, for "did you mean" hints."""
    cls: type[DataclassInstance] = Spec
    for part in loc:
        section = _SECTIONS.get(part)
        if section is None:
            return []
        cls = section
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(data: Any, *, saved: bool = False) -> Spec:
    """Validate a parsed YAML mapping into a `Spec`; raise `SpecError` on the first problem."""
    if not isinstance(data, dict):
        raise SpecError("spec", "must be a mapping of sections", data)
    for section in ("data", "train", "resources", "cost", "search", "report", "script"):
        if section in data and not isinstance(data[section], dict) \
                and not (section == "script" and data[section] is None):
            raise SpecError(section, "must be a mapping", data[section])
    try:
        spec = Spec(**_goal_objectives(data))
    except _PydanticError as err:
        raise from_pydantic(err, known=_known) from None
    except TypeError as err:  # a non-string key, for example
        raise SpecError("spec", str(err)) from None
    _check(spec, saved)
    return spec


def _goal_objectives(data: dict) -> dict:
    """Target mode's objectives are its own: the target's metric and the clock it
    minimises (the report's Pareto front and tables show them). Given ones must agree."""
    search = data.get("search")
    goal = search.get("goal") if isinstance(search, dict) else None
    tgt = goal.get("target") if isinstance(goal, dict) else None
    if not isinstance(search, dict) or not isinstance(goal, dict) or not isinstance(tgt, dict) \
            or len(tgt) != 1 or not isinstance(next(iter(tgt)), str):
        return data  # the spec check says what is wrong
    metric, clock = next(iter(tgt)), goal.get("minimize", "train_time_s")
    if not isinstance(clock, str):
        return data
    want = {metric: "min" if metric in LOWER else "max", clock: "min"}
    given = search.get("objectives")
    if given is not None and (not isinstance(given, dict)
                              or any(want.get(k) != v for k, v in given.items())):
        raise SpecError("search.objectives", "target mode minimises search.goal.minimize to "
                        f"search.goal.target ({want}); leave objectives out", given)
    return data | {"search": search | {"objectives": want}}


def read_yaml(path: str | Path, key: str = "--config") -> Any:
    """A spec file's YAML, read as strictly as `kubectl apply` reads a manifest: a
    readable regular file of at most 1 MB of UTF-8 text, not empty, one document, no
    key written twice in one mapping. Each problem is one SpecError line."""
    path = Path(path)
    if not path.exists():
        raise SpecError(key, "no such file", str(path))
    if path.is_dir():
        raise SpecError(key, "is a folder, not a spec file", str(path))
    if not path.is_file():
        raise SpecError(key, "is not a regular file", str(path))
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(key, f"is {size:,} bytes; a spec file is at most "
                            f"{MAX_SPEC_BYTES:,}", str(path))
        raw = path.read_bytes()
    except OSError as err:
        raise SpecError(key, f"cannot read it ({err.strerror or err})", str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(str(path), f"is not UTF-8 text (byte {raw[err.start]:#04x} at "
                        f"offset {err.start})") from None
    try:
        blank = all(not ln.strip() or ln.strip().startswith("#") for ln in text.splitlines())
        node = None if blank else yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            raise SpecError(str(path), "is empty; a spec needs at least a name "
                            "(see experiments/configs/)")
        _no_key_twice(node, "")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None)
        raise SpecError(str(path), f"is not valid YAML{where}"
                        + (f" ({problem})" if problem else "")) from None
    except RecursionError:  # thousands of nested brackets
        raise SpecError(str(path), "is nested too deeply to be a spec") from None


def _no_key_twice(node: yaml.Node, at: str, seen_nodes: set[int] | None = None) -> None:
    """PyYAML lets the second of two equal keys win silently; a spec must not. Each
    node once: aliases share nodes, and nested ones would multiply the walk."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, yaml.Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            path = f"{at}.{key}" if at else str(key)
            if key is not None and key in seen:
                first = seen[key]
                raise SpecError(path, f"written twice in one mapping (lines "
                                f"{first.start_mark.line + 1} and {k.start_mark.line + 1}); "
                                "the second would silently win")
            if key is not None:
                seen[key] = k
            _no_key_twice(v, path, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _no_key_twice(v, f"{at}[{i}]", seen_nodes)


def load(path: str | Path, overrides: dict[str, dict] | None = None,
         key: str = "--config", saved: bool = False) -> Spec:
    """Load a spec file; `overrides` ({section: {key: value}}, from the command line)
    replace its values before validation, so they are checked as part of it.
    `saved`: a results folder's spec, read where the user's code may not be (report,
    compare, elsewhere), and perhaps written before today's rules: its user code is
    not imported, and a baseline that matches nothing is the report's warning."""
    data = read_yaml(path, key)
    for section, values in (overrides or {}).items():
        if isinstance(data, dict) and isinstance(data.get(section, {}), dict):
            data = data | {section: data.get(section, {}) | values}
    return from_dict(data, saved=saved)


def dump(spec: Spec, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _check_name(key_path: str, name: str) -> None:
    if name not in SEARCHABLE:
        hint = difflib.get_close_matches(name, SEARCHABLE, n=1)
        rule = "not a train or resources field" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        raise SpecError(key_path, rule)


def _check_value(key_path: str, name: str, value: Any, spec: Spec) -> None:
    """Validate one candidate value of a searched field as its dataclass would."""
    cls = SEARCHABLE[name]
    base = spec.train if cls is TrainSpec else spec.resources
    try:
        dataclasses.replace(base, **{name: value})
    except _PydanticError as err:
        e = err.errors()[0]
        raise SpecError(key_path, e["msg"][0].lower() + e["msg"][1:], value) from None


def _check(spec: Spec, saved: bool = False) -> None:
    """Rules that span fields: the search space, objectives, ASHA, models."""
    s = spec.search
    if s.method == "grid" and s.space:
        raise SpecError("search.space", "a grid search takes `grid` and `points`, not `space`",
                        list(s.space))
    if s.method != "grid" and s.grid:
        raise SpecError("search.grid", f"a grid cannot be mixed into a {s.method} search; "
                        "use `space` with choice, or method: grid", dict(s.grid))
    for name, values in s.grid.items():
        _check_name(f"search.grid.{name}", name)
        if not values:
            raise SpecError(f"search.grid.{name}", "needs at least one value", values)
        for i, v in enumerate(values):
            _check_value(f"search.grid.{name}[{i}]", name, v, spec)
    for i, point in enumerate(s.points):
        for name, v in point.items():
            _check_name(f"search.points[{i}].{name}", name)
            if s.method != "grid" and name not in s.space:
                raise SpecError(f"search.points[{i}].{name}",
                                f"a {s.method} search's points may only set `space` keys")
            _check_value(f"search.points[{i}].{name}", name, v, spec)
    for name, dim in s.space.items():
        key = f"search.space.{name}"
        _check_name(key, name)
        kinds = [f.name for f in dataclasses.fields(dim) if getattr(dim, f.name) is not None]
        if len(kinds) != 1:
            raise SpecError(key, "needs exactly one of choice, uniform, loguniform, randint", kinds)
        if dim.kind == "choice" and not dim.args:
            raise SpecError(key + ".choice", "needs at least one value", dim.args)
        if dim.kind != "choice" and not dim.args[0] < dim.args[1]:
            raise SpecError(f"{key}.{dim.kind}", "low < high must hold", dim.args)
        for v in dim.extremes():
            _check_value(f"{key}.{dim.kind}", name, v, spec)
    if s.method != "grid" and not s.space:
        raise SpecError("search.space", f"a {s.method} search needs at least one dimension", {})
    if s.goal is not None:
        _check_goal(spec)
    if not s.objectives:
        raise SpecError("search.objectives", "needs at least one metric", {})
    for metric in s.objectives:
        if metric not in METRICS:
            raise SpecError(f"search.objectives.{metric}", f"unknown metric; one of {sorted(METRICS)}")
    _check_prices(spec.cost)
    if not saved:
        _check_baseline(spec)
    trials = all_trials(spec)
    for metric in s.objectives:
        why = unmeasured(metric, trials, spec.cost)
        if why:
            raise SpecError(f"search.objectives.{metric}", why)
    if s.scheduler == "asha" and s.asha.time_attr == "train_time_s" and s.asha.max_t is None:
        raise SpecError("search.asha.max_t", "is required (in seconds) when time_attr is train_time_s")
    if s.scheduler == "asha":
        max_t = s.asha.max_t if s.asha.max_t is not None else max(t.epochs for t, _ in trials)
        if s.asha.grace_period > max_t:
            raise SpecError("search.asha.grace_period", f"must be at most max_t ({max_t:g}; by "
                            "default the largest epochs)", s.asha.grace_period)
    for _, res in trials:
        if res.cpus_per_worker is not None and res.cpus_per_trial is not None:
            raise SpecError("resources.cpus_per_trial", "set it or cpus_per_worker, not both",
                            res.cpus_per_trial)
    if spec.runner != "loop":
        _check_own_process(spec, saved)
        return
    if True in candidates(spec)["container"]:
        raise SpecError("resources.container", "runs a training function or a script (tiers 2 "
                        "and 3) in the image; our loop runs there through ray up "
                        "cluster/docker.yaml", True)
    for train, res in trials:
        if train.batch_size < res.num_workers:
            raise SpecError("train.batch_size", f"must be at least num_workers ({res.num_workers}) "
                            "because it is split across workers", train.batch_size)


def _check_goal(spec: Spec) -> None:
    g, s = spec.search.goal, spec.search
    trials = all_trials(spec)
    if s.method != "optuna":
        raise SpecError("search.method", "target mode (search.goal) searches with Optuna, "
                        "constrained to the target: use method: optuna", s.method)
    assert g is not None
    if len(g.target) != 1:
        raise SpecError("search.goal.target", "needs exactly one metric and its threshold, "
                        "e.g. {test_acc: 95.0}", dict(g.target))
    (metric, value), = g.target.items()
    if metric not in HIGHER + LOWER:
        raise SpecError(f"search.goal.target.{metric}", "a target is set on one of "
                        f"{list(HIGHER + LOWER)}", value)
    if METRICS[metric].unit == "%" and not 0 < value <= 100:
        raise SpecError(f"search.goal.target.{metric}", "is a percentage: it must be above 0 "
                        "and at most 100", value)
    if metric in LOWER and value <= 0:
        raise SpecError(f"search.goal.target.{metric}", "a loss target must be above 0", value)
    if g.minimize not in CLOCKS:
        raise SpecError("search.goal.minimize", "must be a time or cost that grows over a "
                        f"trial's epochs, one of {list(CLOCKS)}", g.minimize)
    asked: tuple[tuple[str, str, Any], ...] = (
        (f"search.goal.target.{metric}", metric, value),
        ("search.goal.minimize", g.minimize, g.minimize),
        ("search.goal.budget.usd", "cost_usd", g.budget.usd))
    for key, name, given in asked:
        why = given is not None and unmeasured(name, trials, spec.cost)
        if why:
            raise SpecError(key, why, given)
    if s.scheduler != "none":
        raise SpecError("search.scheduler", "target mode stops trials itself (capping); "
                        "use scheduler: none", s.scheduler)
    if g.finalists is not None and "seed" in spec.searched_keys():
        raise SpecError("search.goal.finalists", "the race reruns finalists with new seeds; "
                        "do not search seed (or set finalists: null)", "seed")
    if g.finalists is not None and list(g.finalists.seeds) != sorted(set(g.finalists.seeds)):
        raise SpecError("search.goal.finalists.seeds", "must grow from round to round",
                        g.finalists.seeds)
    if g.finalists is not None and g.finalists.seeds[0] < 2:
        raise SpecError("search.goal.finalists.seeds", "the race's first round needs 2 seeds "
                        "or more (one seed says nothing of the spread)", g.finalists.seeds)


def _check_own_process(spec: Spec, saved: bool) -> None:
    """Tiers 2 and 3: the function resolves; the command names fields, runs under
    torchrun where it must, and sees every searched field; the regexes read the
    samples and give the objectives."""
    s = spec.search
    if spec.script is not None and spec.train.function is not None:
        raise SpecError("train.function", "a spec runs a training function or a script, "
                        "not both", spec.train.function)
    if spec.script is None:
        name = str(spec.train.function)
        if not usercode.is_path(name):
            raise SpecError("train.function", "must be an import path, module:function", name)
        return
    sc = spec.script
    names = output.placeholders(sc.command)
    for f in names:
        if f not in SEARCHABLE:
            hint = difflib.get_close_matches(f, SEARCHABLE, n=1)
            raise SpecError("script.command", f"{{{f}}} is not a train or resources field"
                            + (f" (did you mean {{{hint[0]}}}?)" if hint else ""), sc.command)
    for name in spec.searched_keys():
        if SEARCHABLE[name] is TrainSpec and name not in names:
            where = "grid" if name in s.grid else "space" if name in s.space else "points"
            raise SpecError(f"search.{where}.{name}", f"the script never sees it: put {{{name}}} "
                            "in script.command")
    if "epochs" not in names:
        raise SpecError("script.command", "needs {epochs}: a trial's epochs are counted against "
                        "it (COMPLETED, ASHA's max_t, --smoke)", sc.command)
    for train, res in all_trials(spec):
        argv = output.render(sc.command, trial_fields(train, res))
        if res.num_workers > 1 and not (argv and argv[0] in output.PYTHONS and len(argv) > 1
                                        and (argv[1] == "-m" or not argv[1].startswith("-"))):
            raise SpecError("script.command", "with num_workers > 1 it runs under torchrun, so it "
                            "must read `python SCRIPT ...` or `python -m MODULE ...`", sc.command)
    patterns = output.compile_metrics(sc.metrics)
    output.check_samples(patterns, sc.sample)
    if patterns:
        for metric in s.objectives:
            if metric not in patterns and metric not in output.TIMED:
                raise SpecError(f"search.objectives.{metric}", f"no script.metrics regex reads "
                                f"it (they read {', '.join(patterns)}), and raytune_ctr measures "
                                f"only {', '.join(output.TIMED)}")
    folder = sc.folder or spec.code
    if folder is None:
        raise SpecError("script.folder", "is needed (or `code:`): the folder the command runs in")
    if not saved and not Path(folder).expanduser().is_dir():
        raise SpecError("script.folder" if sc.folder else "code", "is not a folder", folder)


def _check_baseline(spec: Spec) -> None:
    """report.baseline names a configuration the sweep can run: each value valid for
    its field, and, for a grid (or a search's fixed keys), one the sweep has."""
    base = spec.report.baseline
    for name, v in base.items():
        _check_name(f"report.baseline.{name}", name)
        _check_value(f"report.baseline.{name}", name, v, spec)
    if not base:
        return
    s = spec.search
    if s.method == "grid":
        if not any(_matches(spec, point, base) for point in spec.grid_points()):
            raise SpecError("report.baseline", "matches no configuration of the grid", dict(base))
        return
    for name, v in base.items():
        dim = s.space.get(name)
        if dim is None:
            if not _matches(spec, {}, {name: v}):
                raise SpecError(f"report.baseline.{name}", "is not searched, and differs from "
                                "the fixed value", v)
        elif dim.kind == "choice" and v not in dim.args and not any(
                p.get(name) == v for p in s.points):
            raise SpecError(f"report.baseline.{name}", f"is not one of the choices {list(dim.args)}", v)
        elif dim.kind != "choice" and (not isinstance(v, int | float)
                                       or not dim.args[0] <= v <= dim.args[1]):
            raise SpecError(f"report.baseline.{name}", f"is outside the range {list(dim.args)}", v)


def _matches(spec: Spec, point: dict, want: dict) -> bool:
    """Whether the trial at `point` has the values `want` (as its fields hold them:
    a list is a tuple there)."""
    return spec.trial_values(point, want) == spec.trial_values(want, want)


def _check_prices(c: CostSpec) -> None:
    for kind, size in (("cpu", "node_cpus"), ("gpu", "node_gpus")):
        priced = kind in c.node_hour_usd or kind in c.spot_node_hour_usd
        if priced and getattr(c, size) is None:
            raise SpecError(f"cost.{size}", f"is needed with a {kind.upper()} node price: "
                            f"the {kind.upper()}s one node-hour buys")
    if c.market == "spot" and not c.spot_node_hour_usd:
        raise SpecError("cost.market", "spot needs cost.spot_node_hour_usd", "spot")


def unmeasured(metric: str, trials: list[tuple[TrainSpec, ResourceSpec]],
               cost: CostSpec) -> str | None:
    """Why some of these trials would not report `metric`, or None. An objective must
    be one every trial reports, or Tune stops the sweep at the first result without it.
    A GPU's peak and a dataset's classes are only known when the trial runs."""
    for _, r in trials:
        why = unmeasurable(metric, gpu=r.use_gpu, peak=r.use_gpu or r.peak_tflops is not None,
                           priced=hour_usd(r, cost) is not None, market=cost.market)
        if why:
            return why
    return None


def candidates(spec: Spec) -> dict[str, list]:
    """Every value each searched field can take (bounds for ranges), plus fixed ones."""
    out = {name: [getattr(spec.train if cls is TrainSpec else spec.resources, name)]
           for name, cls in SEARCHABLE.items()}
    s = spec.search
    for name, values in s.grid.items():
        out[name] = list(values)
    for name, dim in s.space.items():
        out[name] = list(dim.extremes())
    for p in s.points:
        for name, v in p.items():
            out[name] = list(dict.fromkeys(out[name] + [v]))
    return out


def all_trials(spec: Spec) -> list[tuple[TrainSpec, ResourceSpec]]:
    """Trials to plan for: every grid point, or the corners of a random/optuna space."""
    if spec.search.method == "grid":
        return [spec.resolve(p) for p in spec.grid_points()]
    cand = candidates(spec)
    keys = list(spec.search.space)
    corners = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(cand[k] for k in keys))]
    return [spec.resolve(p) for p in corners + [dict(p) for p in spec.search.points]]


def all_resources(spec: Spec) -> list[ResourceSpec]:
    return [r for _, r in all_trials(spec)]


def smoke(spec: Spec) -> Spec:
    """A tiny subset for 1 epoch: the first two configurations, 512 training samples."""
    s = spec.search
    drop = {"epochs"}
    points = tuple({k: v for k, v in p.items() if k not in drop} for p in spec.grid_points()[:2])
    if s.method == "grid":
        search = dataclasses.replace(s, grid={}, points=points, num_samples=1)
    else:
        search = dataclasses.replace(
            s, num_samples=min(2, s.num_samples),
            space={k: v for k, v in s.space.items() if k not in drop},
            points=tuple({k: v for k, v in p.items() if k not in drop} for p in s.points[:2]))
    if search.scheduler == "asha" and search.asha.time_attr == "epoch":
        search = dataclasses.replace(search, asha=dataclasses.replace(
            search.asha, max_t=1.0, grace_period=min(search.asha.grace_period, 1.0)))
    d = dataclasses.replace(spec.data, subset=min(spec.data.subset or 512, 512),
                            num_samples=min(spec.data.num_samples, 512))
    small = dataclasses.replace(spec, name=f"{spec.name}-smoke", data=d, search=search,
                                train=dataclasses.replace(spec.train, epochs=1))
    try:
        _check_baseline(small)
    except SpecError:  # the baseline was among the configurations left out
        small = dataclasses.replace(small, report=dataclasses.replace(spec.report, baseline={}))
    return small
