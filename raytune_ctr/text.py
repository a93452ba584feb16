"""The text workload (study S4): sentence-pair classification with a Hugging Face
model, GLUE MRPC by default. Needs the `nlp` extra: pip install -e ".[nlp]".

A pair is tokenized once per node, for the trial's tokenizer and max_seq_length,
padded to that length, and cached as one int64 tensor of shape (N, 2, L), holding
input_ids and attention_mask. So text batches go through the same sharding,
device placement and training loop as images, and `PairClassifier` unpacks them.

Offline, nothing is fetched: weights come from the Hugging Face cache (HF_HOME) or
a local folder (`hf:/path`), and data from `data_dir` or the datasets cache.
`make_tiny` writes a random-weight DistilBERT, a local tokenizer and generated
sentence pairs, so the whole path runs with no hub at all.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import torch
from torch import nn

from raytune_ctr.errors import DataError

MRPC_HUB = ("nyu-mll/glue", "mrpc")
MRPC_FILES = ("train.tsv", "dev.tsv")  # GLUE's own layout; dev is the scored split


def _hf_home() -> str:
    return os.environ.get("HF_HOME", "~/.cache/huggingface")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _fetch_hint(source: str) -> str:
    return (f"{source}: not in the Hugging Face cache ({_hf_home()}, set by HF_HOME) "
            f"{'and HF_HUB_OFFLINE is set' if _offline() else 'and the hub cannot be reached'}; "
            f"online, run `hf download {source}` once, or use hf:<folder> with a saved model")


def require() -> None:
    """One line, not an ImportError traceback, when the `nlp` extra is missing."""
    try:
        import datasets  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        raise DataError(f"the text workload needs the nlp extra ({err.name} is missing): "
                        "pip install -e \".[nlp]\"") from None


def _pretrained(auto_class, source: str, **kw):
    """The Hugging Face cache (or folder) first, then the hub; else one line saying
    what to fetch."""
    require()
    try:
        return auto_class.from_pretrained(source, local_files_only=True, **kw)
    except OSError:
        pass
    try:
        return auto_class.from_pretrained(source, **kw)
    except (OSError, ValueError) as err:
        raise DataError(_fetch_hint(source)) from err


def tokenizer(source: str):
    from transformers import AutoTokenizer

    return _pretrained(AutoTokenizer, source)


class PairClassifier(nn.Module):
    """A Hugging Face sequence classifier on our batches: x is (N, 2, L), holding
    input_ids and attention_mask; returns the logits."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=x[:, 0], attention_mask=x[:, 1]).logits


def classifier(source: str, num_classes: int) -> PairClassifier:
    require()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return PairClassifier(_pretrained(AutoModelForSequenceClassification, source,
                                      num_labels=num_classes))


# --- GLUE MRPC ---------------------------------------------------------------


def _read_tsv(path: Path) -> tuple[list[str], list[str], list[int]]:
    """GLUE's MRPC files: Quality, #1 ID, #2 ID, #1 String, #2 String."""
    a, b, y = [], [], []
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:1] != ["Quality"] or len(header) != 5:
            raise DataError(f"{path}: not GLUE's MRPC layout (Quality, #1 ID, #2 ID, "
                            f"#1 String, #2 String); header is {header}")
        for n, line in enumerate(f, 2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 5 or cols[0] not in ("0", "1"):
                raise DataError(f"{path}: line {n} is truncated or corrupt")
            y.append(int(cols[0]))
            a.append(cols[3])
            b.append(cols[4])
    return a, b, y


def mrpc_text(data_dir: Path, download: bool) -> tuple[dict[str, tuple], str]:
    """{"train": (a, b, y), "test": (a, b, y)} and where they came from; test is GLUE's
    validation split (its test labels are hidden)."""
    local = data_dir / "glue-mrpc"
    if all((local / f).is_file() for f in MRPC_FILES):
        return {"train": _read_tsv(local / MRPC_FILES[0]),
                "test": _read_tsv(local / MRPC_FILES[1])}, str(local)
    try:
        import datasets

        datasets.utils.logging.disable_progress_bar()
        ds = datasets.load_dataset(*MRPC_HUB, download_config=None if download else
                                   datasets.DownloadConfig(local_files_only=True))
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds for "not here"
        raise DataError(
            f"GLUE MRPC: not in {local} ({', '.join(MRPC_FILES)}) nor in the Hugging Face "
            f"datasets cache ({_hf_home()}/datasets, set by HF_HOME) "
            f"({type(err).__name__}); online, run `python -c \"import datasets; "
            f"datasets.load_dataset('{MRPC_HUB[0]}', '{MRPC_HUB[1]}')\"` once") from None
    pick = {"train": "train", "test": "validation"}
    return ({k: (ds[s]["sentence1"], ds[s]["sentence2"], ds[s]["label"]) for k, s in pick.items()},
            f"hf:{MRPC_HUB[0]}/{MRPC_HUB[1]}")


def tokenize_pairs(tok, a: list[str], b: list[str], max_len: int) -> torch.Tensor:
    enc = tok(a, b, truncation=True, max_length=max_len, padding="max_length",
              return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).long()


def cache_key(source: str, tok, max_len: int, data_dir: Path) -> str:
    """Names a tokenized cache: the tokenizer, its vocabulary, the length, and the
    local TSV files' size and time (new files are tokenized again)."""
    vocab = sorted(tok.get_vocab().items())
    files = [(f, p.stat().st_size, p.stat().st_mtime_ns) for f in MRPC_FILES
             if (p := data_dir / "glue-mrpc" / f).is_file()]
    return hashlib.sha1(repr((source, vocab, max_len, files)).encode()).hexdigest()[:12]


# --- a tiny stand-in that needs no hub -----------------------------------------

WORDS = ("the a cat dog bird fish sat ran flew swam on under near mat log tree rock "
         "red blue green small big old young quickly slowly today").split()


def _sentence(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(5, 12))]


def make_tiny(folder: str | Path, n_train: int = 2048, n_test: int = 256, seed: int = 0) -> Path:
    """Write a random-weight DistilBERT with a WordPiece tokenizer over WORDS to
    folder/tiny-distilbert, and generated pairs in GLUE's MRPC layout to
    folder/glue-mrpc. A pair is a paraphrase (1) when the second sentence holds the
    first's words reordered; otherwise the second is another sentence (0).
    Returns the model folder, for `train.model: hf:<it>`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    folder = Path(folder).expanduser()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                  model_input_names=["input_ids", "attention_mask"])
    model_dir = folder / "tiny-distilbert"
    tok.save_pretrained(model_dir)
    torch.manual_seed(seed)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2,
                              hidden_dim=64, max_position_embeddings=512,
                              # an extra kwarg at runtime; the dataclass typing lists fields only
                              num_labels=2)  # type: ignore[call-arg]
    DistilBertForSequenceClassification(config).save_pretrained(model_dir)

    rng = random.Random(seed)
    data = folder / "glue-mrpc"
    data.mkdir(parents=True, exist_ok=True)
    for name, n in zip(MRPC_FILES, (n_train, n_test), strict=True):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            s1 = _sentence(rng)
            label = rng.random() < 0.5
            s2 = rng.sample(s1, len(s1)) if label else _sentence(rng)
            lines.append(f"{int(label)}\t{2 * i}\t{2 * i + 1}\t{' '.join(s1)}\t{' '.join(s2)}")
        (data / name).write_text("\n".join(lines) + "\n")
    return model_dir


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m raytune_ctr.text FOLDER   (writes the tiny offline stand-in)")
    print(make_tiny(sys.argv[1]))
