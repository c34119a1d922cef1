"""Dataset loaders on tiny files written in each dataset's real on-disk format; nothing downloads.

The writers below (``write_*``) are also used by tests/test_models.py to build environments on
every dataset.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from main_models import DATASETS, DatasetSplits, load_dataset, load_digits
from main_models.data.files import tokenize
from main_models.data.offline import DIGITS_NOISE, make_parity

# ---- writers of the real formats ---------------------------------------------------------------


def _cifar_batch(rng: np.random.Generator, n: int, num_classes: int, label_key: str) -> dict:
    entry = {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), label_key: rng.integers(0, num_classes, size=n).tolist()}
    if label_key == "fine_labels":
        entry["coarse_labels"] = rng.integers(0, 20, size=n).tolist()
    entry["filenames"] = [f"img_{i}.png" for i in range(n)]
    return entry


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta pickles."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _pickle(folder / f"data_batch_{i}", _cifar_batch(rng, per_batch, 10, "labels"))
    _pickle(folder / "test_batch", _cifar_batch(rng, n_test, 10, "labels"))
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    return folder


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> Path:
    """``root/cifar-100-python`` with train, test and meta pickles."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "train", _cifar_batch(rng, n_train, 100, "fine_labels"))
    _pickle(folder / "test", _cifar_batch(rng, n_test, 100, "fine_labels"))
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    return folder


IMDB_REVIEWS = {
    ("train", "pos"): [("0_10", "A wonderful film.<br /><br />Great acting, great story!"), ("1_7", "Good, not great.")],
    ("train", "neg"): [("2_1", "Awful. Terrible acting."), ("3_4", "Boring film, I didn't like it")],
    ("test", "pos"): [("0_9", "great great film"), ("1_8", "wonderful unseenword")],
    ("test", "neg"): [("2_2", "terrible"), ("3_3", "boring and awful film")],
}


def write_imdb(root: Path) -> Path:
    """``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``."""
    base = root / "aclImdb"
    for (part, polarity), reviews in IMDB_REVIEWS.items():
        folder = base / part / polarity
        folder.mkdir(parents=True)
        for stem, text in reviews:
            (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    (base / "train" / "unsup").mkdir()  # the real archive has it; it is not read
    return base


WIKI_TRAIN = " = Valkyria Chronicles = \n\n the game began development in 2010 . \n the game was a success . \n"
WIKI_TEST = " = Robert Boulter = \n\n the actor began a career in 2000 . \n"


def write_wikitext2(root: Path, *, nested: bool = True) -> Path:
    """wiki.{train,valid,test}.tokens in ``root/wikitext-2`` (or ``root`` directly)."""
    folder = root / "wikitext-2" if nested else root
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wiki.train.tokens").write_text(WIKI_TRAIN, encoding="utf-8")
    (folder / "wiki.valid.tokens").write_text(WIKI_TEST, encoding="utf-8")
    (folder / "wiki.test.tokens").write_text(WIKI_TEST, encoding="utf-8")
    return folder


@pytest.fixture
def skip_md5(monkeypatch):
    """Tiny test files cannot match torchvision's md5 sums: check that the files exist instead.
    Patched in the test only; the loader itself always runs torchvision's real check."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


# ---- registry ----------------------------------------------------------------------------------


def test_registry_and_unknown_names():
    assert {"digits", "digits-graded", "parity", "grid-lookup", "cifar10", "cifar100", "imdb", "wikitext2"} <= set(DATASETS)
    with pytest.raises(
        ValueError, match=r"unknown dataset 'nope'; available: digits, digits-graded, parity, grid-lookup, grid-reach \(offline\), cifar10"
    ):
        load_dataset("nope")
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['max_len'\]"):
        load_dataset("digits", max_len=3)


# ---- CIFAR -------------------------------------------------------------------------------------


def test_cifar10_loads_through_torchvision_in_nchw_order(tmp_path, skip_md5):
    folder = write_cifar10(tmp_path)
    splits = load_dataset("cifar10", str(tmp_path))
    assert splits.x_train.shape == (20, 3, 32, 32) and splits.x_test.shape == (6, 3, 32, 32)
    assert splits.x_train.dtype == torch.float32 and splits.num_classes == 10
    assert splits.input_kind == "image" and splits.meta["classes"][3] == "class3"
    with open(folder / "data_batch_1", "rb") as fh:
        raw = pickle.load(fh)
    # the pickle row is R, G, B planes of 32x32: undo the normalisation and compare pixel by pixel
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    pixels = ((splits.x_train[0] * std + mean) * 255).round()
    np.testing.assert_array_equal(pixels.numpy().astype(np.uint8), raw["data"][0].reshape(3, 32, 32))
    assert splits.y_train[:4].tolist() == raw["labels"]


def test_cifar100_uses_fine_labels(tmp_path, skip_md5):
    folder = write_cifar100(tmp_path)
    splits = load_dataset("cifar100", str(tmp_path))
    with open(folder / "train", "rb") as fh:
        raw = pickle.load(fh)
    assert splits.num_classes == 100 and splits.x_train.shape == (12, 3, 32, 32)
    assert splits.y_train.tolist() == raw["fine_labels"]


def test_cifar_missing_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python"):
        load_dataset("cifar100", str(tmp_path), download=False)


def test_cifar_files_failing_md5_are_refused(tmp_path):
    write_cifar10(tmp_path)  # no md5 patch: torchvision's real check runs and fails
    with pytest.raises(ValueError, match="integrity check"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_malformed_pickles_are_named(tmp_path, skip_md5):
    folder = write_cifar10(tmp_path)
    _pickle(folder / "data_batch_3", {"data": np.zeros((2, 3072), dtype=np.uint8)})  # no labels
    with pytest.raises(ValueError, match="malformed CIFAR pickle"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_label_out_of_range(tmp_path, skip_md5):
    folder = write_cifar10(tmp_path)
    batch = _cifar_batch(np.random.default_rng(1), 4, 10, "labels")
    batch["labels"][0] = 12
    _pickle(folder / "data_batch_2", batch)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\], found \[\d+, 12\]"):
        load_dataset("cifar10", str(tmp_path))


# ---- IMDB --------------------------------------------------------------------------------------


def test_imdb_layout_vocab_padding_and_levels(tmp_path):
    write_imdb(tmp_path)
    splits = load_dataset("imdb", str(tmp_path), max_len=6)
    assert splits.x_train.shape == (4, 6) and splits.x_test.shape == (4, 6)
    assert splits.input_kind == "tokens" and splits.x_train.dtype == torch.int64
    # neg files come first (label 0), then pos (label 1); files sorted by name
    assert splits.y_train.tolist() == [0, 0, 1, 1] and splits.y_test.tolist() == [0, 0, 1, 1]
    # ratings 1, 4, 10, 7 -> extremity levels 0, 3, 0, 3
    assert splits.difficulty_train.tolist() == [0, 3, 0, 3]
    assert splits.difficulty_test.tolist() == [1, 2, 1, 2]
    # "terrible" alone: front padded, one known id at the end
    row = splits.x_test[0]
    assert row[:-1].tolist() == [0] * 5 and int(row[-1]) > 1
    # "unseenword" is not in the training vocabulary -> unknown id 1
    assert int(splits.x_test[3, -1]) == 1
    # long reviews keep their last tokens: "a wonderful film great acting great story" -> last 6
    assert (splits.x_train[2] > 1).all()
    # the vocabulary is built from the training reviews only: pad, unknown and each train word
    train_words = {w for (part, _), reviews in IMDB_REVIEWS.items() if part == "train" for _, text in reviews for w in tokenize(text)}
    assert splits.meta["vocab_size"] == 2 + len(train_words)


def test_imdb_accepts_the_extracted_directory_itself(tmp_path):
    base = write_imdb(tmp_path)
    assert load_dataset("imdb", str(base), max_len=4).x_train.shape == (4, 4)


def test_imdb_missing_and_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"aclImdb.*aclImdb_v1.tar.gz"):
        load_dataset("imdb", str(tmp_path))
    base = write_imdb(tmp_path)
    (base / "train" / "pos" / "review.txt").write_text("no rating in the name")
    with pytest.raises(ValueError, match=r"review.txt is not named <id>_<rating>.txt"):
        load_dataset("imdb", str(tmp_path))
    (base / "train" / "pos" / "review.txt").unlink()
    (base / "train" / "pos" / "9_2.txt").write_text("a positive review rated 2?")
    with pytest.raises(ValueError, match=r"9_2.txt has rating 2, which does not fit the 'pos' folder"):
        load_dataset("imdb", str(tmp_path))


# ---- WikiText-2 --------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False])
def test_wikitext2_windows_predict_the_next_token(tmp_path, nested):
    write_wikitext2(tmp_path, nested=nested)
    splits = load_dataset("wikitext2", str(tmp_path), seq_len=4)
    tokens = []
    for line in WIKI_TRAIN.splitlines():
        if line.split():
            tokens += line.split() + ["<eos>"]
    n_windows = len(range(0, len(tokens) - 4, 4))
    assert splits.x_train.shape == (n_windows, 4) and splits.num_classes == splits.meta["vocab_size"]
    assert splits.meta["task"] == "next-token prediction"
    # windows are consecutive: the label of window k is the first token of window k + 1
    assert splits.y_train[:-1].tolist() == splits.x_train[1:, 0].tolist()
    # train words all have ids > 1; a test-only word maps to unknown (1)
    assert (splits.x_train > 1).all()
    assert (splits.x_test == 1).any()
    overlapping = load_dataset("wikitext2", str(tmp_path), seq_len=4, stride=1)
    assert overlapping.x_train.shape[0] == len(tokens) - 4


def test_wikitext2_missing_and_too_short(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wiki.train.tokens and wiki.test.tokens.*wikitext-2-v1.zip"):
        load_dataset("wikitext2", str(tmp_path))
    folder = write_wikitext2(tmp_path)
    (folder / "wiki.test.tokens").write_text("too short\n")
    with pytest.raises(ValueError, match="fewer than one window"):
        load_dataset("wikitext2", str(tmp_path), seq_len=8)


# ---- graded offline datasets -------------------------------------------------------------------


def test_digits_graded_levels_and_determinism():
    a, b = load_dataset("digits-graded", seed=3), load_dataset("digits-graded", seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.difficulty_test, b.difficulty_test)
    assert not torch.equal(load_dataset("digits-graded", seed=4).x_train, a.x_train)
    levels = len(DIGITS_NOISE)
    clean = load_digits(seed=3)
    # every image of the digits split at every level, sample-major
    assert a.x_train.shape == (levels * 1438, 64) and a.x_test.shape == (levels * 359, 64)
    assert a.has_difficulty and a.difficulty_test[:levels].tolist() == list(range(levels))
    assert torch.equal(a.y_test, clean.y_test.repeat_interleave(levels))
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    by_level = a.x_test.view(359, levels, 64)
    torch.testing.assert_close(by_level[:, 0], clean.x_test)  # level 0 is uncorrupted
    damage = (by_level - clean.x_test[:, None]).abs().mean(dim=(0, 2))
    assert (damage.diff() > 0).all()  # corruption grows with the level


def test_parity_is_deterministic_front_padded_and_bucketed():
    a = load_dataset("parity", seed=1, num_train=300, num_test=100)
    b = load_dataset("parity", seed=1, num_train=300, num_test=100)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(load_dataset("parity", seed=2, num_train=300, num_test=100).x_train, a.x_train)
    x = a.x_train
    lengths = (x > 0).sum(dim=1)
    # front padded: once a bit appears, bits continue to the end
    assert ((x > 0).long().diff(dim=1) >= 0).all() and (x[:, -1] > 0).all()
    assert torch.equal(a.y_train, ((x == 2).sum(dim=1) % 2))
    assert torch.equal(a.difficulty_train, (lengths - 1) * 5 // 15)
    assert a.meta["vocab_size"] == 3 and a.input_kind == "tokens"


def test_make_parity_labels():
    tokens, labels, lengths = make_parity(50, 8, np.random.default_rng(0), min_len=8)
    assert (lengths == 8).all() and np.array_equal(labels, (tokens == 2).sum(axis=1) % 2)


# ---- a user's .npz -----------------------------------------------------------------------------


def test_npz_flat_with_seeded_split(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.normal(size=(50, 7)), y=rng.integers(0, 3, size=50))
    a = load_dataset(str(path), seed=5)
    assert a.x_train.shape == (40, 7) and a.x_test.shape == (10, 7) and a.x_train.dtype == torch.float32
    assert a.input_kind == "flat" and a.num_classes == 3 and a.name == "mine.npz"
    assert torch.equal(load_dataset(str(path), seed=5).y_test, a.y_test)


def test_npz_images_tokens_and_given_test_split(tmp_path):
    rng = np.random.default_rng(0)
    img = tmp_path / "img.npz"
    np.savez(
        img,
        x=rng.random((10, 3, 8, 8), dtype=np.float32),
        y=np.arange(10) % 4,
        x_test=rng.random((4, 3, 8, 8), dtype=np.float32),
        y_test=np.array([0, 1, 2, 3]),
        difficulty=np.arange(10) % 2,
        difficulty_test=np.array([0, 1, 0, 1]),
    )
    s = load_dataset(str(img))
    assert s.input_kind == "image" and s.x_test.shape == (4, 3, 8, 8) and s.difficulty_test.tolist() == [0, 1, 0, 1]
    tok = tmp_path / "tok.npz"
    np.savez(tok, x=rng.integers(0, 9, size=(20, 5)).astype(np.int32), y=np.arange(20) % 2, vocab_size=np.int64(12))
    t = load_dataset(str(tok))
    assert t.input_kind == "tokens" and t.x_train.dtype == torch.int64 and t.meta["vocab_size"] == 12


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 2))}, r"missing array 'y' \(found: x\)"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)}, "y has 3 labels but the inputs have 4 rows"),
        ({"x": np.zeros((4, 2, 3)), "y": np.zeros(4, dtype=int)}, r"x must be \(N, features\) or \(N, C, H, W\)"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, 1, 2, 5]), "num_classes": np.int64(3)}, "labels go up to 5 but num_classes is 3"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, -1, 1, 0])}, "negative labels"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "y must be 1-D integer labels"),
        ({"x": np.zeros((4, 8, 8, 3)), "y": np.zeros(4, dtype=int)}, "looks channels-last"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "x_test": np.zeros((2, 2))}, "x_test and y_test must be given together"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "labels": np.zeros(4)}, r"unexpected arrays \['labels'\]"),
        (
            {"x": np.zeros((4, 2)), "y": np.zeros(4, dtype=int), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2, dtype=int)},
            "differ in shape",
        ),
        ({"x": np.array([[1, -2], [0, 1]]), "y": np.zeros(2, dtype=int)}, "negative token ids"),
        ({"x": np.array([[1, 5], [0, 1]] * 2), "y": np.zeros(4, dtype=int), "vocab_size": np.int64(4)}, r"token ids must be in \[0, 3\]"),
        ({"x": np.full((4, 2), np.nan), "y": np.zeros(4, dtype=int)}, "NaN"),
    ],
)
def test_npz_malformed_is_named(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(path))


def test_npz_missing_or_not_a_zip(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such dataset file"):
        load_dataset(str(tmp_path / "absent.npz"))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        load_dataset(str(tmp_path / "junk.npz"))


# ---- the container -----------------------------------------------------------------------------


def test_splits_infer_and_check_the_input_kind():
    x = torch.zeros(4, 3)
    y = torch.zeros(4, dtype=torch.long)
    assert DatasetSplits("f", x, y, x, y, 2).input_kind == "flat"
    tokens = torch.zeros(4, 5, dtype=torch.long)
    s = DatasetSplits("t", tokens, y, tokens, y, 2)
    assert s.input_kind == "tokens" and s.meta["vocab_size"] == 1
    with pytest.raises(ValueError, match="input_kind 'image' does not match"):
        DatasetSplits("f", x, y, x, y, 2, meta={"input_kind": "image"})
    with pytest.raises(ValueError, match=r"inputs must be float \(N, features\)"):
        DatasetSplits("b", torch.zeros(4, 2, 2), y, torch.zeros(4, 2, 2), y, 2)
