"""Datasets read from their real on-disk formats: CIFAR-10/100, IMDB, WikiText-2, and a user's .npz.

Each loader checks that every file it needs is there before reading any of them, and turns a
malformed file into a ``ValueError`` that names the file and the problem, so a dataset either
loads completely or not at all. A missing dataset raises ``FileNotFoundError`` saying where the
files are expected and how to get them.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .splits import DatasetSplits, infer_input_kind, split_indices

DATA_DIR_ENV = "DYNALAY_DATA_DIR"
DOWNLOAD_ENV = "DYNALAY_DOWNLOAD"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$DYNALAY_DATA_DIR``, else ``./data``."""
    return Path(data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV, "data")).expanduser()


def download_requested(download: bool | None) -> bool:
    """An explicit ``download`` wins; otherwise ``$DYNALAY_DOWNLOAD`` in {1, true, yes}."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


# ---- CIFAR ------------------------------------------------------------------------------------
_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def _load_cifar(name: str, data_dir: str | None, *, seed: int, download: bool | None, hundred: bool) -> DatasetSplits:
    """CIFAR through ``torchvision.datasets.CIFAR10/CIFAR100`` (which verifies the files' md5),
    normalised per channel, as float32 (N, 3, 32, 32). ``seed`` is unused: the split is fixed."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if hundred else CIFAR10
    root = resolve_data_dir(data_dir)
    folder = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    want_download = download_requested(download)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not want_download:
        raise FileNotFoundError(
            f"{name}: expected {', '.join(files)} in {folder} (missing: {', '.join(missing)}). Get them with "
            f"load_dataset({name!r}, {str(root)!r}, download=True) or {DOWNLOAD_ENV}=1, or download {cls.url} "
            f"and extract it into {root}"
        )
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=want_download)
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise ValueError(
                f"{name}: the files in {folder} fail torchvision's integrity check ({err}); delete {folder} and download again"
            ) from err
        except (KeyError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
            raise ValueError(f"{name}: malformed CIFAR pickle in {folder}: {type(err).__name__}: {err}") from err
        data = np.asarray(ds.data)
        targets = np.asarray(ds.targets, dtype=np.int64)
        if data.ndim != 4 or data.shape[1:] != (32, 32, 3) or len(targets) != len(data):
            raise ValueError(
                f"{name}: malformed CIFAR data in {folder}: images {data.shape}, {len(targets)} labels "
                f"(expected (N, 32, 32, 3) and N labels)"
            )
        x = ((data.astype(np.float32) / 255.0 - _CIFAR_MEAN) / _CIFAR_STD).transpose(0, 3, 1, 2)
        parts.append((torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(targets), list(ds.classes)))
    (x_tr, y_tr, classes), (x_te, y_te, _) = parts
    return DatasetSplits(
        name,
        x_tr,
        y_tr,
        x_te,
        y_te,
        num_classes=100 if hundred else 10,
        meta={"source": str(folder), "input_kind": "image", "classes": classes},
    )


def load_cifar10(data_dir: str | None = None, *, seed: int = 0, download: bool | None = None) -> DatasetSplits:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py`` (50k train / 10k test, 10 classes)."""
    return _load_cifar("cifar10", data_dir, seed=seed, download=download, hundred=False)


def load_cifar100(data_dir: str | None = None, *, seed: int = 0, download: bool | None = None) -> DatasetSplits:
    """CIFAR-100 from ``data_dir/cifar-100-python`` (50k train / 10k test, 100 fine classes)."""
    return _load_cifar("cifar100", data_dir, seed=seed, download=download, hundred=True)


# ---- text helpers -----------------------------------------------------------------------------
PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words (letters/digits, with an optional apostrophe suffix); HTML line breaks,
    which IMDB reviews contain as ``<br />``, are dropped."""
    return _WORD.findall(text.lower().replace("<br />", " "))


def build_vocab(token_lists: Iterable[list[str]], max_size: int) -> dict[str, int]:
    """Id 0 = pad, 1 = unknown, then the most frequent tokens (ties broken alphabetically, so the
    vocabulary is deterministic) up to ``max_size`` entries in all."""
    if max_size < 3:
        raise ValueError(f"a vocabulary needs room for pad, unknown and one token: max_size >= 3, got {max_size}")
    counts = Counter(tok for toks in token_lists for tok in toks)
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max_size - 2]
    vocab = {PAD: 0, UNK: 1}
    for tok, _ in ranked:
        vocab[tok] = len(vocab)
    return vocab


def encode_front_padded(token_lists: list[list[str]], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """(N, max_len) int64 ids, keeping the *last* ``max_len`` tokens and padding at the front, so
    the last position (which the LSTM head reads) is always the end of the text."""
    out = np.zeros((len(token_lists), max_len), dtype=np.int64)
    unk = vocab[UNK]
    for row, toks in enumerate(token_lists):
        ids = [vocab.get(t, unk) for t in toks[-max_len:]]
        if ids:
            out[row, max_len - len(ids) :] = ids
    return out


# ---- IMDB -------------------------------------------------------------------------------------
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
_IMDB_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


def _imdb_root(data_dir: str | None) -> Path:
    root = resolve_data_dir(data_dir)
    for candidate in (root / "aclImdb", root):
        if all((candidate / part / label).is_dir() for part in ("train", "test") for label in ("pos", "neg")):
            return candidate
    raise FileNotFoundError(
        f"imdb: expected the aclImdb layout (train/pos, train/neg, test/pos, test/neg holding <id>_<rating>.txt "
        f"files) in {root / 'aclImdb'} or {root}. Download {IMDB_URL} and extract it into {root}"
    )


def _read_imdb_part(root: Path, part: str) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    texts: list[list[str]] = []
    labels: list[int] = []
    ratings: list[int] = []
    for label, polarity in ((0, "neg"), (1, "pos")):
        folder = root / part / polarity
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.is_dir():
                continue
            match = _IMDB_NAME.match(path.name)
            if match is None:
                raise ValueError(f"imdb: {path} is not named <id>_<rating>.txt")
            rating = int(match.group(2))
            if not 1 <= rating <= 10 or (rating >= 7) != bool(label) or 5 <= rating <= 6:
                raise ValueError(f"imdb: {path} has rating {rating}, which does not fit the {polarity!r} folder (neg 1-4, pos 7-10)")
            try:
                texts.append(tokenize(path.read_text(encoding="utf-8")))
            except UnicodeDecodeError as err:
                raise ValueError(f"imdb: {path} is not UTF-8 text: {err}") from err
            labels.append(label)
            ratings.append(rating)
    if not texts:
        raise ValueError(f"imdb: no reviews found under {root / part}")
    return texts, np.asarray(labels, dtype=np.int64), np.asarray(ratings, dtype=np.int64)


def load_imdb(data_dir: str | None = None, *, seed: int = 0, max_len: int = 128, max_vocab: int = 20000) -> DatasetSplits:
    """IMDB sentiment (Maas et al. 2011) from the aclImdb directory: neg = 0, pos = 1.

    Reviews are tokenized by :func:`tokenize`, the vocabulary (``max_vocab`` ids including pad and
    unknown) is built from the training reviews only, and each review keeps its last ``max_len``
    tokens, front-padded. Difficulty is a proxy from the star rating in the file name: 1 or 10 ->
    0, 2 or 9 -> 1, 3 or 8 -> 2, 4 or 7 -> 3 (less extreme ratings are more ambiguous reviews).
    ``seed`` is unused: the split is the dataset's own.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    root = _imdb_root(data_dir)
    tr_text, y_tr, r_tr = _read_imdb_part(root, "train")
    te_text, y_te, r_te = _read_imdb_part(root, "test")
    vocab = build_vocab(tr_text, max_vocab)

    def level(r: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.where(r >= 7, 10 - r, r - 1).astype(np.int64))

    return DatasetSplits(
        "imdb",
        torch.from_numpy(encode_front_padded(tr_text, vocab, max_len)),
        torch.from_numpy(y_tr),
        torch.from_numpy(encode_front_padded(te_text, vocab, max_len)),
        torch.from_numpy(y_te),
        num_classes=2,
        meta={
            "source": str(root),
            "input_kind": "tokens",
            "vocab_size": len(vocab),
            "pad_id": 0,
            "max_len": max_len,
            "difficulty": "rating extremity: 1/10 -> 0, 2/9 -> 1, 3/8 -> 2, 4/7 -> 3",
        },
        difficulty_train=level(r_tr),
        difficulty_test=level(r_te),
    )


# ---- WikiText-2 -------------------------------------------------------------------------------
WIKITEXT_URL = "https://wikitext.smerity.com/wikitext-2-v1.zip"


def _wikitext_root(data_dir: str | None) -> Path:
    root = resolve_data_dir(data_dir)
    needed = ("wiki.train.tokens", "wiki.test.tokens")
    for candidate in (root / "wikitext-2", root):
        if all((candidate / f).is_file() for f in needed):
            return candidate
    raise FileNotFoundError(
        f"wikitext2: expected wiki.train.tokens and wiki.test.tokens (wiki.valid.tokens is not used) in "
        f"{root / 'wikitext-2'} or {root}. Download wikitext-2-v1.zip (the tokenized, non-raw version; "
        f"{WIKITEXT_URL}) and extract it into {root}"
    )


def _read_wikitext(path: Path) -> list[str]:
    """Whitespace tokens with ``<eos>`` at the end of every non-empty line (Merity et al. 2016)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"wikitext2: {path} is not UTF-8 text: {err}") from err
    tokens: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if words:
            tokens += words + ["<eos>"]
    return tokens


def _windows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, len(ids) - seq_len, stride)
    index = starts[:, None] + np.arange(seq_len)[None, :]
    return ids[index], ids[starts + seq_len]


def load_wikitext2(
    data_dir: str | None = None,
    *,
    seed: int = 0,
    seq_len: int = 32,
    stride: int | None = None,
    max_vocab: int = 10000,
) -> DatasetSplits:
    """WikiText-2 (Merity et al. 2016) as next-token prediction: each sample is a window of
    ``seq_len`` token ids and its label is the token that follows, so accuracy is next-token
    accuracy. Windows start every ``stride`` tokens (default ``seq_len``: non-overlapping).

    The vocabulary (``max_vocab`` ids; 0 is an unused pad id so the stem's pad embedding is the
    same as for other token data, 1 is unknown, and the corpus' own ``<unk>`` maps to it) is built
    from the training file. ``num_classes`` is the vocabulary size. ``seed`` is unused.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stride = seq_len if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    root = _wikitext_root(data_dir)
    train_tokens = _read_wikitext(root / "wiki.train.tokens")
    test_tokens = _read_wikitext(root / "wiki.test.tokens")
    vocab = build_vocab([train_tokens], max_vocab)
    parts = []
    for name, tokens in (("wiki.train.tokens", train_tokens), ("wiki.test.tokens", test_tokens)):
        if len(tokens) <= seq_len:
            raise ValueError(f"wikitext2: {root / name} holds {len(tokens)} tokens, fewer than one window of {seq_len} + 1")
        ids = np.fromiter((vocab.get(t, 1) for t in tokens), dtype=np.int64, count=len(tokens))
        parts.append(_windows(ids, seq_len, stride))
    (x_tr, y_tr), (x_te, y_te) = parts
    return DatasetSplits(
        "wikitext2",
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
        num_classes=len(vocab),
        meta={
            "source": str(root),
            "input_kind": "tokens",
            "vocab_size": len(vocab),
            "pad_id": 0,
            "max_len": seq_len,
            "task": "next-token prediction",
        },
    )


# ---- a user's own .npz ------------------------------------------------------------------------
MAX_CLASSES_PER_SAMPLE = 2
MIN_CLASS_LIMIT = 1000
"""An .npz may have up to max(2 x its samples, 1000) classes: a label of 1e9 would otherwise ask
for a 1e9-way head (a 256 GB allocation)."""
MAX_VOCAB = 10_000_000
"""Token ids of an .npz must fit a vocabulary of at most this many entries."""


def load_npz(path: str | os.PathLike, *, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """A user's dataset in one ``.npz`` file.

    Arrays: ``x`` - float (N, features) or (N, C, H, W), or integer token ids (N, T) with 0 as the
    pad id; ``y`` - integer labels (N,). Optional: ``x_test`` and ``y_test`` (else a seeded
    ``test_fraction`` split of x, y), ``num_classes`` (else max label + 1), ``difficulty`` and
    ``difficulty_test`` (integer levels, 0 = easiest), ``vocab_size`` for token ids.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no such dataset file: {path} (an .npz with arrays x and y, see load_npz)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from err

    def fail(problem: str) -> ValueError:
        return ValueError(f"{path}: {problem}")

    for key in ("x", "y"):
        if key not in arrays:
            raise fail(f"missing array {key!r} (found: {', '.join(sorted(arrays)) or 'none'}); need x and y")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise fail("x_test and y_test must be given together")
    known = {"x", "y", "x_test", "y_test", "num_classes", "difficulty", "difficulty_test", "vocab_size"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise fail(f"unexpected arrays {unknown}; allowed: {sorted(known)}")

    def inputs(key: str) -> np.ndarray:
        x = arrays[key]
        if x.dtype.kind == "f":
            if x.ndim not in (2, 4):
                raise fail(f"{key} must be (N, features) or (N, C, H, W); got shape {x.shape}")
            if x.ndim == 4 and x.shape[1] > 4 and x.shape[-1] in (1, 3, 4):
                raise fail(f"{key} of shape {x.shape} looks channels-last; store images as (N, C, H, W)")
            if not np.isfinite(x).all():
                raise fail(f"{key} holds NaN or infinite values")
            return x.astype(np.float32)
        if x.dtype.kind in "iu":
            if x.ndim != 2:
                raise fail(f"integer {key} is read as token ids (N, T); got shape {x.shape}")
            if x.size and x.min() < 0:
                raise fail(f"{key} holds negative token ids")
            return x.astype(np.int64)
        raise fail(f"{key} must be a float or integer array, got dtype {x.dtype}")

    def labels(key: str, n: int) -> np.ndarray:
        y = arrays[key]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise fail(f"{key} must be 1-D integer labels; got {y.dtype} of shape {y.shape}")
        if len(y) != n:
            raise fail(f"{key} has {len(y)} labels but the inputs have {n} rows")
        if y.size and y.min() < 0:
            raise fail(f"{key} holds negative labels")
        return y.astype(np.int64)

    def levels(key: str, n: int) -> np.ndarray | None:
        if key not in arrays:
            return None
        d = arrays[key]
        if d.ndim != 1 or d.dtype.kind not in "iu" or len(d) != n or (d.size and d.min() < 0):
            raise fail(f"{key} must be {n} non-negative integer levels; got {d.dtype} of shape {d.shape}")
        return d.astype(np.int64)

    x = inputs("x")
    y = labels("y", len(x))
    d = levels("difficulty", len(x))
    if "x_test" in arrays:
        x_te = inputs("x_test")
        y_te = labels("y_test", len(x_te))
        d_te = levels("difficulty_test", len(x_te))
        if (d is None) != (d_te is None):
            raise fail("difficulty and difficulty_test must be given together")
        x_tr, y_tr, d_tr = x, y, d
    else:
        if "difficulty_test" in arrays:
            raise fail("difficulty_test given without x_test and y_test")
        if len(x) < 2:
            raise fail(f"needs at least 2 samples to split into train and test, got {len(x)}")
        train, test = split_indices(len(x), test_fraction, seed)
        x_tr, y_tr, x_te, y_te = x[train], y[train], x[test], y[test]
        d_tr, d_te = (None, None) if d is None else (d[train], d[test])

    def scalar(key: str) -> int | None:
        if key not in arrays:
            return None
        v = arrays[key]
        if v.ndim != 0 or v.dtype.kind not in "iu" or int(v) < 1:
            raise fail(f"{key} must be a positive integer scalar; got {v.dtype} of shape {v.shape}")
        return int(v)

    observed = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    declared = scalar("num_classes")
    vocab_size = scalar("vocab_size")
    if declared is not None:
        num_classes = declared
        if observed > num_classes:
            raise fail(f"labels go up to {observed - 1} but num_classes is {num_classes}")
    else:
        num_classes = observed
    samples = len(y_tr) + len(y_te)
    if num_classes > max(MAX_CLASSES_PER_SAMPLE * samples, MIN_CLASS_LIMIT):
        raise fail(
            f"{num_classes} classes (labels up to {observed - 1}) for {samples} samples: the head would need a "
            f"{num_classes}-way output. Labels must be 0..K-1 with K at most {MAX_CLASSES_PER_SAMPLE} x the samples "
            f"(or {MIN_CLASS_LIMIT}); map them to a dense range first, e.g. np.unique(y, return_inverse=True)[1]"
        )
    if x_tr.dtype.kind == "i":
        vocab = vocab_size if vocab_size is not None else int(max(x_tr.max(initial=0), x_te.max(initial=0))) + 1
        if vocab > MAX_VOCAB:
            raise fail(f"token ids need a vocabulary of {vocab} entries, more than {MAX_VOCAB}; map them to a dense range first")
    x_tr_t = torch.from_numpy(np.ascontiguousarray(x_tr))
    meta: dict = {"source": str(path), "input_kind": infer_input_kind(x_tr_t)}
    if meta["input_kind"] == "tokens":
        meta["pad_id"] = 0
        if vocab_size is not None:
            meta["vocab_size"] = vocab_size
    if "x_test" not in arrays:
        meta["split_seed"] = seed
    try:
        return DatasetSplits(
            path.name,
            x_tr_t,
            torch.from_numpy(y_tr),
            torch.from_numpy(np.ascontiguousarray(x_te)),
            torch.from_numpy(y_te),
            num_classes=num_classes,
            meta=meta,
            difficulty_train=None if d_tr is None else torch.from_numpy(d_tr),
            difficulty_test=None if d_te is None else torch.from_numpy(d_te),
        )
    except ValueError as err:
        raise fail(str(err)) from err
