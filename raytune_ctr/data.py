"""Datasets: one registry, prepared once per node, batched the same way for every model.

Small sets (digits, MNIST, Fashion-MNIST, synthetic, tokenized text) are decoded
into tensors once and batched by indexing, with no DataLoader; on-disk image
folders go through a DataLoader over this rank's indices. Either way each rank
sees its own shard, the same size on every rank, so DDP steps stay in lockstep.
Adding a dataset is one `@register` entry here (and its test).
"""

from __future__ import annotations

import gzip
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypeVar

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import Dataset, Subset

from raytune_ctr import usercode
from raytune_ctr.errors import DataError, SpecError, one_line

if TYPE_CHECKING:  # the spec sits above the registries: it asks them whether names exist
    from torchvision.datasets import ImageFolder

    from raytune_ctr.spec import DataSpec

# A split as the registry gives it: map-style and sized (torch's Dataset type has no len).
Split: TypeAlias = "TensorSet | ImageFolder | _Listed | Subset"
T = TypeVar("T")

log = logging.getLogger(__name__)
# Debian's dataset-fashion-mnist package; looked at after data_dir.
SYSTEM_DIRS = {"fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
               "mnist": [Path("/usr/share/datasets/mnist")]}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Per-channel mean/std from pytorch/examples (MNIST) and the Fashion-MNIST training set.
NORMALIZE = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


@dataclass(frozen=True)
class Tokenize:
    """How a text dataset is tokenized for a trial: by its model's tokenizer."""

    source: str  # a Hugging Face hub id or a saved folder
    max_len: int


@dataclass
class Datasets:
    train: Split
    test: Split
    input_shape: tuple[int, ...]  # C, H, W; text: 2, max_len
    num_classes: int
    source: str  # where the data came from, for the report

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSet)


class TensorSet(Dataset):
    """Images and labels held as tensors; batched by indexing (see `batches`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        assert len(x) == len(y)
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def to(self, device: torch.device) -> TensorSet:
        return TensorSet(self.x.to(device), self.y.to(device))

    def nbytes(self) -> int:
        return self.x.nbytes + self.y.nbytes


@dataclass(frozen=True)
class DatasetEntry:
    load: Callable[[DataSpec, Tokenize | None], Datasets]
    # The (C, H, W) it yields, known without loading it (None: only once loaded).
    shape: Callable[[DataSpec], tuple[int, int, int] | None]
    # `load` gives TensorSets, which data_on_device can hold on the GPU.
    in_memory: bool = True
    # Token ids of sentence pairs, tokenized for the trial's model (Tokenize).
    text: bool = False


REGISTRY: dict[str, DatasetEntry] = {}


def register(name: str, shape: Callable[[DataSpec], tuple[int, int, int] | None], *,
             in_memory: bool = True, text: bool = False):
    """Register `fn(spec, tokenize) -> Datasets` as dataset `name`."""
    def wrap(fn):
        REGISTRY[name] = DatasetEntry(fn, shape, in_memory, text)
        return fn

    return wrap


def entry(name: str) -> DatasetEntry:
    if usercode.is_path(name):  # the user's factory; its shape is known once loaded
        usercode.resolve(name, "data.dataset")
        return DatasetEntry(_own, lambda s: None, in_memory=False)
    if name not in REGISTRY:
        raise SpecError("data.dataset", f"unknown dataset; one of {sorted(REGISTRY)} or an "
                        "import path (module:factory)", name)
    return REGISTRY[name]


def input_shape(spec: DataSpec) -> tuple[int, int, int] | None:
    """The (C, H, W) a dataset yields, known without loading it (None if unknown)."""
    return entry(spec.dataset).shape(spec)


def load(spec: DataSpec, tokenize: Tokenize | None = None) -> Datasets:
    """Load (and on first use on this node, fetch) a dataset. Safe to call from many
    workers. Text datasets need `tokenize`."""
    found = entry(spec.dataset)
    if found.text and tokenize is None:
        raise DataError(f"{spec.dataset} is text: it is tokenized for the trial's model")
    root = Path(spec.data_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    # One fetch per node: concurrent workers wait on the lock, then find the files.
    with FileLock(str(root / f".{spec.dataset}.lock")):
        ds = found.load(spec, tokenize)
    if spec.subset and spec.subset < len(ds.train):
        ds.train = _head(ds.train, spec.subset)
    return ds


_LOADED: dict[tuple, Datasets] = {}


def load_cached(spec: DataSpec, tokenize: Tokenize | None = None) -> Datasets:
    """`load`, once per process: a reused trial process keeps its datasets. Each call
    gets its own `Datasets`, since `place` swaps a trial's sets for GPU copies."""
    key = (spec, tokenize)
    if key not in _LOADED:
        _LOADED[key] = load(spec, tokenize)
    return replace(_LOADED[key])


def _head(ds: Split, n: int) -> Split:
    if isinstance(ds, TensorSet):
        return TensorSet(ds.x[:n], ds.y[:n])
    return torch.utils.data.Subset(ds, range(n))


def _read_cache(path: Path) -> dict | None:
    """A tensor cache this module wrote, or None when missing or damaged (rebuilt then)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path)
    except Exception as err:  # noqa: BLE001 - a damaged cache is rebuilt, whatever broke
        log.warning("%s is damaged (%s); rebuilding it", path, type(err).__name__)
        return None


def _write_cache(path: Path, sets: dict[str, TensorSet], **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({k: (s.x, s.y) for k, s in sets.items()} | extra, tmp)
    tmp.replace(path)  # atomic: another node process never reads half a file


# --- registry entries -------------------------------------------------------


@register("digits", lambda s: (1, 8, 8))
def _digits(spec: DataSpec, tokenize: None = None) -> Datasets:
    """scikit-learn's bundled 8x8 handwritten digits: offline, the embedded default.

    The split tensors are cached in data_dir: importing scikit-learn costs each
    fresh Train worker about a second, more than an epoch of this set.
    """
    cache = Path(spec.data_dir).expanduser() / "digits.pt"
    if (hit := _read_cache(cache)) is not None:
        return Datasets(TensorSet(*hit["train"]), TensorSet(*hit["test"]), (1, 8, 8), 10,
                        str(cache))
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    # A fixed split (not the trial's seed) so every trial is tested on the same images.
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    mean, std = xtr.mean(), xtr.std()

    def t(a, b):
        xs = torch.tensor((a - mean) / std, dtype=torch.float32).view(-1, 1, 8, 8)
        return TensorSet(xs, torch.tensor(b, dtype=torch.long))

    train, test = t(xtr, ytr), t(xte, yte)
    _write_cache(cache, {"train": train, "test": test})
    return Datasets(train, test, (1, 8, 8), 10, "sklearn.datasets.load_digits")


@register("synthetic", lambda s: (s.channels, s.image_size or 32, s.image_size or 32))
def _synthetic(spec: DataSpec, tokenize: None = None) -> Datasets:
    """Random images and labels of a given shape, for throughput runs (accuracy is chance)."""
    size = spec.image_size or 32
    g = torch.Generator().manual_seed(0)
    n_test = max(spec.num_samples // 8, 1)

    def t(n):
        return TensorSet(torch.randn(n, spec.channels, size, size, generator=g),
                         torch.randint(0, spec.num_classes, (n,), generator=g))

    return Datasets(t(spec.num_samples), t(n_test), (spec.channels, size, size),
                    spec.num_classes, "synthetic")


# Sentence pairs, tokenized per (tokenizer, max_len) and cached as int64 (N, 2, L):
# input_ids and attention_mask. Needs the `nlp` extra (raytune_ctr/text.py).
@register("glue-mrpc", lambda s: None, text=True)  # (2, max_seq_length): known per trial
def _glue_mrpc(spec: DataSpec, tokenize: Tokenize) -> Datasets:
    from raytune_ctr import text

    root = Path(spec.data_dir).expanduser()
    tok = text.tokenizer(tokenize.source)
    key = text.cache_key(tokenize.source, tok, tokenize.max_len, root)
    cache = root / "glue-mrpc" / f"tokenized-{key}.pt"
    shape = (2, tokenize.max_len)
    if (t := _read_cache(cache)) is not None:
        return Datasets(TensorSet(*t["train"]), TensorSet(*t["test"]), shape, 2, t["source"])
    raw, source = text.mrpc_text(root, spec.download)
    sets = {k: TensorSet(text.tokenize_pairs(tok, a, b, tokenize.max_len), torch.tensor(y))
            for k, (a, b, y) in raw.items()}
    _write_cache(cache, sets, source=source)
    return Datasets(sets["train"], sets["test"], shape, 2, source)


def _idx_source(name: str, spec: DataSpec) -> Path | None:
    """The first folder holding the four IDX files (gzipped or raw)."""
    root = Path(spec.data_dir).expanduser()
    tv = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    for d in [root, root / name, root / tv / "raw", *SYSTEM_DIRS.get(name, [])]:
        if all(_idx_path(d, f) for f in IDX_FILES):
            return d
    return None


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / stem, folder / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def _idx_file(folder: Path, stem: str) -> Path:
    if (path := _idx_path(folder, stem)) is None:  # a download that left it out
        raise DataError(f"{folder}: has no {stem} (or {stem}.gz); delete it and fetch it again")
    return path


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or raw, checking its length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot be read ({err}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    want = int(np.prod(dims))
    body = len(raw) - 4 - 4 * ndim
    if body != want:
        raise DataError(f"{path}: truncated or corrupt: header says {want} bytes of data, "
                        f"file has {body}; delete it and fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _download_idx(name: str, spec: DataSpec) -> Path:
    """Fetch through torchvision into data_dir; on failure say where we looked and what to do."""
    from torchvision import datasets

    root = Path(spec.data_dir).expanduser()
    cls = datasets.FashionMNIST if name == "fashion-mnist" else datasets.MNIST
    looked = [str(root), *(str(d) for d in SYSTEM_DIRS.get(name, []))]
    hint = ("apt-get install dataset-fashion-mnist, or " if name == "fashion-mnist" else "")
    if not spec.download:
        raise DataError(f"dataset {name!r}: no IDX files in {looked} and data.download is false; "
                        f"{hint}put the four IDX files in {root}")
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError when offline
        reason = one_line(err)
        raise DataError(f"dataset {name!r}: no IDX files in {looked} and the download failed "
                        f"({reason}); {hint}put the four IDX files (.gz or raw) in {root}, "
                        "or set data.data_dir") from None
    return root / cls.__name__ / "raw"


def _idx_dataset(name: str):
    def loader(spec: DataSpec, tokenize: None = None) -> Datasets:
        folder = _idx_source(name, spec) or _download_idx(name, spec)
        xtr, ytr, xte, yte = (read_idx(_idx_file(folder, f)) for f in IDX_FILES)
        mean, std = NORMALIZE[name]

        def t(x, y):
            xs = (torch.from_numpy(x.copy()).float().div_(255).sub_(mean).div_(std)).unsqueeze(1)
            return TensorSet(xs, torch.from_numpy(y.astype(np.int64)))

        return Datasets(t(xtr, ytr), t(xte, yte), (1, 28, 28), 10, str(folder))

    return loader


register("mnist", lambda s: (1, 28, 28))(_idx_dataset("mnist"))
register("fashion-mnist", lambda s: (1, 28, 28))(_idx_dataset("fashion-mnist"))


class _Listed(Dataset):
    """(path, label) pairs read with torchvision's image loader."""

    def __init__(self, samples, transform):
        from torchvision.datasets.folder import default_loader

        self.samples, self.transform, self.loader = samples, transform, default_loader

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(self.loader(path)), label


@register("imagefolder", lambda s: (3, s.image_size, s.image_size) if s.image_size else None,
          in_memory=False)
def _imagefolder(spec: DataSpec, tokenize: None = None) -> Datasets:
    """Class-per-folder images in the tiny-imagenet-200 layout.

    train/<class>/[images/]*.JPEG, and either val/<class>/... or tiny-imagenet's
    val/images + val/val_annotations.txt.
    """
    from torchvision import datasets, transforms

    root = Path(spec.data_dir).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"dataset 'imagefolder': no train/ folder in {root}; set data.data_dir to "
                        "a folder in the tiny-imagenet-200 layout (train/<class>/..., val/...)")
    steps = [transforms.Resize((spec.image_size, spec.image_size))] if spec.image_size else []
    tf = transforms.Compose([*steps, transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    train = datasets.ImageFolder(str(root / "train"), transform=tf)
    ann = root / "val" / "val_annotations.txt"
    if ann.is_file():
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        samples = [(str(root / "val" / "images" / f), train.class_to_idx[c]) for f, c in rows]
        test = _Listed(samples, tf)
    else:
        test = datasets.ImageFolder(str(root / "val"), transform=tf)
    x0, _ = train[0]
    return Datasets(train, test, tuple(x0.shape), len(train.classes), str(root))


def _own(spec: DataSpec, tokenize: Tokenize | None = None) -> Datasets:
    """The user's dataset factory (data.dataset: "module:factory"), called with the
    data section as a dict. It returns (train, test) or (train, test, num_classes);
    each split is a map-style Dataset of (x, y) or an (x, y) pair of tensors/arrays."""
    import dataclasses

    out = usercode.call(spec.dataset, "data.dataset", dataclasses.asdict(spec))
    if not isinstance(out, tuple | list) or len(out) not in (2, 3):
        raise SpecError("data.dataset", f"{spec.dataset} must return (train, test) or "
                        f"(train, test, num_classes), not {type(out).__name__}", spec.dataset)
    train, test = (_own_split(spec.dataset, part, name)
                   for part, name in zip(out[:2], ("train", "test"), strict=True))
    if len(train) == 0 or len(test) == 0:
        raise SpecError("data.dataset", f"{spec.dataset} returned an empty split", spec.dataset)
    if len(out) == 3 and not (isinstance(out[2], int | np.integer) and out[2] > 1):
        raise SpecError("data.dataset", f"{spec.dataset}: num_classes must be an int above 1, "
                        f"not {out[2]!r}", spec.dataset)
    num_classes = int(out[2]) if len(out) == 3 else _num_classes(spec.dataset, train)
    first = train[0]
    if not (isinstance(first, tuple | list) and len(first) == 2):
        raise SpecError("data.dataset", f"{spec.dataset}: a train item must be an (x, y) "
                        f"pair, not {type(first).__name__}", spec.dataset)
    return Datasets(train, test, tuple(torch.as_tensor(first[0]).shape), num_classes,
                    f"{spec.dataset} (your code)")


def _own_split(path: str, part, name: str) -> Split:
    if isinstance(part, tuple | list) and len(part) == 2:
        try:
            x, y = (torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
                    for a in part)
        except (TypeError, ValueError) as err:
            raise SpecError("data.dataset", f"{path}: {name} is not numeric tensors "
                            f"({one_line(err)})", path) from None
        if len(x) != len(y):
            raise SpecError("data.dataset", f"{path}: {name} has {len(x)} inputs but "
                            f"{len(y)} labels", path)
        return TensorSet(x.float() if x.is_floating_point() else x, y.long())
    if isinstance(part, Dataset) and hasattr(part, "__len__"):
        return part  # type: ignore[return-value]  # map-style and sized, as batches needs
    raise SpecError("data.dataset", f"{path}: {name} must be a sized torch Dataset of (x, y) "
                    f"or an (x, y) pair of tensors, not {type(part).__name__}", path)


def _num_classes(path: str, train: Split) -> int:
    if isinstance(train, TensorSet):
        return int(train.y.max()) + 1
    if (classes := getattr(train, "classes", None)) is not None:
        return len(classes)
    if (targets := getattr(train, "targets", None)) is not None:
        return int(max(targets)) + 1
    raise SpecError("data.dataset", f"{path}: cannot tell the number of classes; return "
                    "(train, test, num_classes)", path)


TEXT = {name for name, e in REGISTRY.items() if e.text}
IN_MEMORY = {name for name, e in REGISTRY.items() if e.in_memory}


def place(ds: Datasets, device: torch.device, mode: str | bool) -> bool:
    """Move an in-memory set onto `device` once, if `mode` (auto|True|False) says so."""
    if device.type != "cuda" or not ds.in_memory or mode is False:
        return False
    train, test = ds.train, ds.test
    assert isinstance(train, TensorSet) and isinstance(test, TensorSet)  # in memory: both are
    size = train.nbytes() + test.nbytes()
    if mode == "auto" and size > torch.cuda.mem_get_info(device)[0] // 2:
        return False
    ds.train, ds.test = train.to(device), test.to(device)
    return True


# --- batching ---------------------------------------------------------------


def shard_indices(n: int, rank: int, world: int, *, seed: int | None, pad: bool) -> torch.Tensor:
    """This rank's sample indices: a seeded permutation (or identity), padded so that
    every rank gets the same count when `pad`, like DistributedSampler."""
    if seed is None:
        idx = torch.arange(n)
    else:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if pad and n % world:
        idx = torch.cat([idx, idx[: world - n % world]])
    return idx[rank::world]


def batches(ds: Split, batch_size: int, *, rank: int = 0, world: int = 1,
            seed: int | None = None, train: bool = True, device: torch.device | None = None,
            loader_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) batches of this rank's shard, on `device`.

    `seed` None means no shuffling (evaluation). Training shards are padded so all
    ranks take the same number of steps; evaluation shards are not, so every test
    image counts exactly once.
    """
    device = device or torch.device("cpu")
    idx = shard_indices(len(ds), rank, world, seed=seed, pad=train)
    if isinstance(ds, TensorSet):
        idx = idx.to(ds.x.device)  # a set already on the GPU is gathered there
        for i in range(0, len(idx), batch_size):
            b = idx[i : i + batch_size]
            yield (ds.x[b].to(device, non_blocking=True), ds.y[b].to(device, non_blocking=True))
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx.tolist()), batch_size=batch_size,
        num_workers=loader_workers, pin_memory=device.type == "cuda",
        persistent_workers=False)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def timed(it: Iterator[T]) -> Iterator[tuple[float, T]]:
    """Wrap an iterator, yielding (seconds spent waiting for the item, item)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t0, item
