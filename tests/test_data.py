"""ABC cleaning, the built-in corpus and its splits, and other data sources."""

import json

import pytest

from finetune.abc import Tune, clean_tune, split_tunes
from finetune.args import DataArguments
from finetune.data import BUILTIN_DIR, clean_splits, load_raw_splits, split_of

BOOK = """% a tune book
X:1
T:The First
N:a note to drop
M: 6/8
L:1/8
R:jig
K:D
dAF DFA|d2e f2g| % inline comment
w:some words

X:2
T:No Key
M:4/4
abc|

X:3
T:Two Voices
M:4/4
K:C
V:1
abc|
V:2
CDE|
"""


def test_split_and_clean_a_tune_book():
    """Tunes split at X: and blank lines; comments, free text and lyrics go; music fields are normalised."""
    raws = split_tunes(BOOK)
    assert len(raws) == 3
    results = [clean_tune(raw) for raw in raws]
    assert results[0] == Tune(text="M:6/8\nL:1/8\nR:jig\nK:D\ndAF DFA|d2e f2g|\n", title="The First")
    assert results[1] == "no K: field"
    assert results[2] == "multi-voice"
    assert clean_tune(raws[0], keep_fields="TMLK").text.startswith("T:The First\nM:6/8")


def test_cleaning_is_idempotent_and_repairs_cp437_text():
    tune = clean_tune("X:1\nR:geistliche, religi\x94se Lieder\nK:G\nG\tA|\n")
    assert tune.text == "R:geistliche, religiöse Lieder\nK:G\nG A|\n"
    assert clean_tune(tune.text) == tune


def test_hash_split_is_deterministic_and_proportional():
    texts = [f"K:C\n{i}|\n" for i in range(20000)]
    splits = [split_of(t, 5) for t in texts]
    assert splits == [split_of(t, 5) for t in texts]
    for split in ("validation", "test"):
        assert 0.04 < splits.count(split) / len(texts) < 0.06


def test_builtin_corpus_is_real_split_and_deduplicated(corpus):
    """~13,000 music21 tunes; no tune text appears twice, so none is in two splits."""
    stats = json.loads((BUILTIN_DIR / "stats.json").read_text())
    assert stats["tunes_read"] > 12000
    sizes = {split: len(texts) for split, texts in corpus.items()}
    assert sizes["train"] > 10000 and 400 < sizes["validation"] < 1000 and 400 < sizes["test"] < 1000
    every = [t for texts in corpus.values() for t in texts]
    assert len(every) == len(set(every))
    assert all(split_of(t, 5) == "validation" for t in corpus["validation"])
    assert all("\nK:" in "\n" + t for t in every)


@pytest.mark.parametrize("kind", ["abc", "jsonl", "csv", "parquet", "folder"])
def test_local_sources_load_and_split(kind, tmp_path):
    """Every supported local source gives train and validation splits of cleaned tunes."""
    tunes = [f"X:{i}\nT:t{i}\nM:4/4\nK:C\n{''.join('CDEFGABc'[int(d)] for d in oct(i)[2:])}|\n" for i in range(200)]
    if kind == "abc":
        path = tmp_path / "book.abc"
        path.write_text("\n".join(tunes))
    elif kind == "folder":
        path = tmp_path / "tunes"
        path.mkdir()
        (path / "train.abc").write_text("\n".join(tunes[:150]))
        (path / "validation.abc").write_text("\n".join(tunes[150:]))
    else:
        import pandas as pd

        path = tmp_path / f"tunes.{kind}"
        frame = pd.DataFrame({"abc": tunes})
        {"jsonl": lambda: frame.to_json(path, orient="records", lines=True),
         "csv": lambda: frame.to_csv(path, index=False),
         "parquet": lambda: frame.to_parquet(path)}[kind]()
    args = DataArguments(dataset_name_or_path=str(path), text_column="abc", validation_split_percentage=10)
    splits, skipped = clean_splits(load_raw_splits(args), args)
    assert skipped == {}
    assert len(splits["validation"]) > 0
    assert sum(len(s) for s in splits.values()) == len(tunes)
    assert all(t.startswith("M:4/4\nK:C\n") for t in splits["train"]["text"])
    if kind == "folder":
        assert len(splits["validation"]) == 50


def test_unusable_data_is_an_error_not_a_crash(tmp_path):
    from finetune.errors import UserError

    path = tmp_path / "notes.txt"
    path.write_text("these are not tunes\n\njust prose\n")
    args = DataArguments(dataset_name_or_path=str(path))
    with pytest.raises(UserError, match="no usable training tunes"):
        clean_splits(load_raw_splits(args), args)


def test_duplicates_are_dropped_and_never_shared_between_splits(tmp_path):
    """The same tune under two titles is one tune once X: and T: are gone; a held-out copy of a training tune goes."""
    (tmp_path / "train.abc").write_text("X:1\nT:a\nK:C\nCDE|\n\nX:2\nT:b\nK:C\nCDE|\n\nX:3\nK:C\nFGA|\n")
    (tmp_path / "validation.abc").write_text("X:1\nT:c\nK:C\nCDE|\n\nX:2\nK:C\nGAB|\n")
    args = DataArguments(dataset_name_or_path=str(tmp_path))
    splits, skipped = clean_splits(load_raw_splits(args), args)
    assert skipped == {"exact duplicate": 2}
    assert splits["train"]["text"] == ["K:C\nCDE|\n", "K:C\nFGA|\n"]
    assert splits["validation"]["text"] == ["K:C\nGAB|\n"]


def test_bad_tunes_are_skipped_with_reasons_and_the_run_goes_on(tmp_path, capsys):
    """Empty tunes, tunes without K:, multi-voice tunes, prose and non-UTF-8 bytes: counted, not fatal."""
    from conftest import TINY_RECIPE, run_cli

    data = tmp_path / "tunes"
    data.mkdir()
    good = [f"X:{i}\nM:4/4\nK:G\n{'GABc' * (1 + i % 9)}d{i % 7}|\n" for i in range(60)]
    bad = ["X:100\n", "X:101\nT:no key\nabc|\n", "X:102\nK:C\nV:1\nabc|\nV:2\nCDE|\n"]
    long_tune = "X:103\nM:4/4\nK:D\n" + "defg|" * 200 + "\n"
    (data / "book.abc").write_bytes("\n\n".join(good + bad + [long_tune]).encode() + b"X:104\nT:caf\xe9\nK:C\nceg|\n")
    (data / "notes.txt").write_text("This folder holds tunes.\nNothing else here is music.\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        [TINY_RECIPE, "--dataset_name_or_path", data, "--validation_split_percentage", 20, "--dry_run",
         "--output_dir", out], capsys,
    )
    assert code == 0, stderr
    assert "skipped tunes: {'no K: field': 3, 'multi-voice': 1}" in stdout
    assert "tunes over 256 tokens truncated" in stdout
    assert not out.exists()
    args = DataArguments(dataset_name_or_path=str(data), validation_split_percentage=20)
    splits, _ = clean_splits(load_raw_splits(args), args)
    assert sum(len(s) for s in splits.values()) == len(good) + 2  # the long tune and the Latin-1 one are usable


@pytest.mark.integration
def test_a_stream_packs_the_same_tunes_as_the_prepared_corpus(tmp_path, monkeypatch):
    """streaming: true over the bundled corpus yields rows that hold exactly the training tunes the map-style
    path packs (the corpus is one buffer, so the very same rows, in shuffled order), and the estimate is near."""
    from test_packing import packed_tunes

    from finetune.packing import tokenize_and_pack
    from finetune.streaming import clean_streams, tokenize_and_pack_stream
    from finetune.tokenizer import build_abc_tokenizer

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    tokenizer = build_abc_tokenizer(256)
    args = DataArguments(max_eval_samples=200)
    tunes, _ = clean_splits(load_raw_splits(args), args)
    rows, stats = tokenize_and_pack(tunes, tokenizer, 256, args)
    streamed_args = DataArguments(max_eval_samples=200, streaming=True)
    streams = clean_streams(load_raw_splits(streamed_args), streamed_args)
    streamed, estimate = tokenize_and_pack_stream(streams, tokenizer, 256, streamed_args, seed=0)
    train = [row for row in streamed["train"]]
    assert sorted(map(tuple, (row["input_ids"] for row in train))) == sorted(map(tuple, rows["train"]["input_ids"]))
    assert [row["input_ids"] for row in train] != rows["train"]["input_ids"][:]  # shuffled, not in packing order
    assert sorted(packed_tunes({k: [r[k] for r in streamed["validation"]] for k in train[0]})) == sorted(
        packed_tunes(rows["validation"][:])
    )
    per_tune = stats["train"]["tokens"] / stats["train"]["tunes"]
    assert abs(estimate["train"]["tokens_per_tune"] - per_tune) < 0.1 * per_tune
    assert abs(estimate["train"]["padding_share"] - stats["train"]["padding_share"]) < 0.05


def test_a_stream_without_a_validation_split_is_hash_split_like_the_prepared_one(tmp_path):
    """The same JSONL file, streamed or prepared: the same tunes land in train and in validation."""
    from finetune.streaming import clean_streams

    path = tmp_path / "tunes.jsonl"
    path.write_text("".join(json.dumps({"text": f"M:4/4\nK:C\n{'CDEF' * (1 + i % 5)}G{i}|\n"}) + "\n" for i in range(400)))
    args, streamed_args = DataArguments(dataset_name_or_path=str(path)), DataArguments(dataset_name_or_path=str(path), streaming=True)
    prepared, _ = clean_splits(load_raw_splits(args), args)
    streams = clean_streams(load_raw_splits(streamed_args), streamed_args)
    for split in ("train", "validation"):
        assert [row["text"] for row in streams[split]] == prepared[split]["text"]
    assert 0 < len(prepared["validation"]) < 60


@pytest.mark.integration
def test_an_unreadable_stream_is_one_line_before_training(tmp_path):
    """A corrupt file met only while streaming is reported when the plan reads its first tunes, in one line."""
    import subprocess
    import sys

    from conftest import REPO, TINY_RECIPE

    path = tmp_path / "tunes.jsonl"
    path.write_text('{"text": "K:C\\nCDE|\\n"}\n{"text": broken\n')
    result = subprocess.run(
        [sys.executable, "run_finetune.py", TINY_RECIPE, "--dataset_name_or_path", path, "--streaming", "true",
         "--max_steps", "2", "--output_dir", tmp_path / "out"], cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "stream failed" in result.stderr and "tunes.jsonl" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_transposed_copies_join_the_training_split_only(tmp_path, monkeypatch):
    """transpose_train adds each training tune moved by each shift; validation stays in its keys, so
    held-out numbers stay honest; prepared and streamed training tunes are the same."""
    from finetune.abc.transpose import transpose
    from finetune.streaming import clean_streams

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    plain = DataArguments(max_train_samples=200, max_eval_samples=50)
    args = DataArguments(max_train_samples=200, max_eval_samples=50, transpose_train=[-2, 3])
    base, _ = clean_splits(load_raw_splits(plain), plain)
    augmented, _ = clean_splits(load_raw_splits(args), args)
    assert augmented["validation"]["text"][:] == base["validation"]["text"][:]
    originals = base["train"]["text"][:]
    copies = [moved for text in originals for n in (-2, 3) if (moved := transpose(text, n)[0]) is not None]
    assert augmented["train"]["text"][:] == originals + copies and len(copies) >= 390
    streamed_args = DataArguments(max_train_samples=200, max_eval_samples=50, transpose_train=[-2, 3], streaming=True)
    streamed = clean_streams(load_raw_splits(streamed_args), streamed_args)
    assert [row["text"] for row in streamed["train"]] == originals + copies


def test_transposing_the_bundled_tunes_uses_every_core_where_tokenizing_them_does_not(corpus):
    """Moving a tune costs ~7 tokenizations per shift: the bundled training tunes moved 4 ways are worth worker
    processes (70 s in one on a GPU host), tokenizing them alone is not; preprocessing_num_workers overrides both."""
    import os

    from finetune.data import TRANSPOSE_WEIGHT, worker_count

    tunes = len(corpus["train"])
    assert worker_count(DataArguments(), tunes) is None
    assert worker_count(DataArguments(), tunes, TRANSPOSE_WEIGHT * 4) == len(os.sched_getaffinity(0))
    assert worker_count(DataArguments(preprocessing_num_workers=1), tunes, TRANSPOSE_WEIGHT * 4) == 1


@pytest.mark.integration
def test_train_tunes_meter_keeps_only_training_tunes_on_the_meter(corpus, tmp_path, monkeypatch):
    """train_tunes 'meter' drops every training tune with a bar off the meter (the checker's verdicts), counts
    them as skipped, and leaves validation as it was; prepared and streamed training tunes are the same."""
    from finetune.abc.check import analyse
    from finetune.data import OFF_METER
    from finetune.streaming import clean_streams

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    meter = DataArguments(max_train_samples=300, train_tunes="meter")
    kept, skipped = clean_splits(load_raw_splits(meter), meter)
    on_meter = [text for text in corpus["train"] if analyse(text).bars_off == 0]
    off = len(corpus["train"]) - len(on_meter)
    assert 0.05 * len(corpus["train"]) < off < 0.3 * len(corpus["train"])  # the real corpus has such tunes
    assert skipped[OFF_METER] == off
    assert kept["train"]["text"][:] == on_meter[:300]
    assert kept["validation"]["text"][:] == list(corpus["validation"])
    streamed_args = DataArguments(max_train_samples=300, max_eval_samples=50, train_tunes="meter", streaming=True)
    streamed = clean_streams(load_raw_splits(streamed_args), streamed_args)
    assert [row["text"] for row in streamed["train"]] == on_meter[:300]


def test_a_corpus_another_run_prepared_meanwhile_is_kept(tmp_path, monkeypatch):
    """Two runs preparing the corpus at once: the later one's rename finds the earlier one's folder there (two
    test workers on a fresh clone hit this). It keeps those files, leaves no temporary folder, and returns."""
    import shutil

    from finetune import data

    root = tmp_path / "corpus"
    root.mkdir()
    for path in sorted(data.music21_corpus_root().rglob("*.abc"))[:3]:  # real tune books, few of them
        shutil.copy(path, root / path.name)
    monkeypatch.setattr(data, "music21_corpus_root", lambda: root)
    out = tmp_path / "prepared"
    first = data.prepare_music21(out)
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    assert sum(first["tunes_kept"].values()) > 10 and set(files) == {"train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"}
    assert data.prepare_music21(out) == first  # the earlier run finished first: its folder is there
    assert {path.name: path.read_bytes() for path in out.iterdir()} == files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus", "prepared"]  # no temporary folder left


def session_dump(path, corpus_tunes):
    """A TheSession-style tunes.csv: two settings of each tune, the header in columns, the body in `abc`."""
    import csv

    from finetune.abc import header_length

    rows = []
    for tune_id, tune in enumerate(corpus_tunes, 1):
        body = tune[header_length(tune):].strip()
        for setting in range(2):
            rows.append({"tune_id": tune_id, "setting_id": 10 * tune_id + setting, "name": f"Tune {tune_id}", "type": "jig",
                         "meter": "6/8", "mode": ["Gmajor", "Edorian", "Aminor"][tune_id % 3],
                         "abc": body + ("\r\n" + body.splitlines()[0] if setting else ""), "date": "2020", "username": "u",
                         "composer": ""})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_the_field_s_tune_books_load_as_they_come(tmp_path, corpus, capsys):
    """TheSession's CSV (headers from its columns; a tune's settings in one split), IrishMAN's JSON (the tune column
    found by name, control codes dropped) and folk-rnn's token files load without a flag, >= 95% of tunes usable."""
    from conftest import TINY_RECIPE, run_cli

    from finetune.abc.layouts import session_key

    tunes = corpus["train"][:120]
    rows = session_dump(tmp_path / "tunes.csv", tunes)
    session = DataArguments(dataset_name_or_path=str(tmp_path / "tunes.csv"), keep_fields="TMLKRQP")  # titles kept
    raw = load_raw_splits(session)
    assert raw.layout.startswith("TheSession's layout") and "tune_id" in raw.layout
    cleaned, skipped = clean_splits(raw, session)
    assert sum(len(split) for split in cleaned.values()) >= 0.95 * len(rows), skipped
    for text in cleaned["train"]["text"][:20]:
        tune_id = int(next(line for line in text.splitlines() if line.startswith("T:"))[len("T:Tune "):])
        row = rows[2 * (tune_id - 1)]
        assert f"M:{row['meter']}\n" in text and f"K:{session_key(row['mode'])}\n" in text and "R:jig" in text
    where = {}
    for split, ds in cleaned.items():
        for text in ds["text"]:
            where.setdefault(text.split("\n")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in where.values())  # both settings of a tune sit in one split
    named = load_raw_splits(DataArguments(dataset_name_or_path=str(tmp_path / "tunes.csv"), text_column="abc"))
    assert named.layout == raw.layout  # `--text_column abc`, as a user would first try, reads it the same way

    irishman = tmp_path / "irishman"
    irishman.mkdir()
    for split, part in (("train", corpus["train"][:80]), ("validation", corpus["validation"][:20])):
        (irishman / f"{split}.json").write_text(json.dumps([{"control code": "S:2\nB:8\n", "abc notation": t} for t in part]))
    raw = load_raw_splits(DataArguments(dataset_name_or_path=str(irishman)))
    assert raw.layout == "tune column 'abc notation' found by name; its 'control code' column is dropped"
    cleaned, _ = clean_splits(raw, DataArguments(dataset_name_or_path=str(irishman)))
    assert len(cleaned["train"]) + len(cleaned["validation"]) >= 95

    tokens = tmp_path / "folkrnn.txt"
    tokens.write_text("\n\n".join(f"M:6/8\nK:Cmaj\n|: G A B c {n} | d c B c 3 :|" for n in range(2, 60)) + "\n")
    raw = load_raw_splits(DataArguments(dataset_name_or_path=str(tokens)))
    assert raw.layout.startswith("folk-rnn's token layout")
    cleaned, _ = clean_splits(raw, DataArguments(dataset_name_or_path=str(tokens), validation_split_percentage=10))
    texts = [t for ds in cleaned.values() for t in ds["text"]]
    assert len(texts) >= 0.95 * 58 and all("L:1/8\nK:C\n" in t for t in texts)
    code, out, err = run_cli([TINY_RECIPE, "--dataset_name_or_path", tokens, "--validation_split_percentage", 10,
                              "--output_dir", tmp_path / "run", "--dry_run"], capsys)
    assert code == 0, err
    assert "tunes read from folk-rnn's token layout" in out  # the plan says how it read them


def test_sources_choose_collections_in_every_split(corpus, tmp_path):
    """`sources` keeps a collection's tunes in every split and `exclude_sources` leaves them out: together they
    partition the corpus; a name that matches nothing, or data whose tunes name no source, is one clear error."""
    from finetune.errors import UserError

    only = DataArguments(sources=["oneills1850"])
    without = DataArguments(exclude_sources=["oneills1850"])
    kept, _ = clean_splits(load_raw_splits(only), only)
    rest, _ = clean_splits(load_raw_splits(without), without)
    for split, texts in corpus.items():
        assert len(kept[split]) > 50
        assert sorted([*kept[split]["text"], *rest[split]["text"]]) == sorted(texts)
        assert all(s.startswith("oneills1850/") for s in kept[split]["source"])
        assert not any(s.startswith("oneills1850/") for s in rest[split]["source"])
    with pytest.raises(UserError, match="no tune comes from 'oneils1850'; its sources are airdsAirs, essenFolksong"):
        load_raw_splits(DataArguments(exclude_sources=["oneils1850"]))

    books = tmp_path / "books"
    books.mkdir()
    (books / "jigs.abc").write_text("".join(f"X:{i}\nM:6/8\nK:D\nA{i}B|\n\n" for i in range(1, 30)))
    (books / "reels.abc").write_text("".join(f"X:{i}\nM:4/4\nK:G\nG{i}B|\n\n" for i in range(1, 30)))
    args = DataArguments(dataset_name_or_path=str(books), sources=["reels.abc"], validation_split_percentage=10)
    chosen, _ = clean_splits(load_raw_splits(args), args)
    texts = [t for ds in chosen.values() for t in ds["text"]]
    assert len(texts) == 29 and all("M:4/4" in t for t in texts)

    table = tmp_path / "tunes.jsonl"
    table.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus["train"][:20]))
    with pytest.raises(UserError, match="its tunes name no source"):
        load_raw_splits(DataArguments(dataset_name_or_path=str(table), sources=["x"]))


def test_the_plan_names_the_sources_left_out(tmp_path, capsys):
    from conftest import TINY_RECIPE, run_cli

    code, out, err = run_cli([TINY_RECIPE, "--exclude_sources", "oneills1850", "ryansMammoth",
                              "--output_dir", tmp_path / "run", "--dry_run"], capsys)
    assert code == 0, err
    assert "data             music21 without oneills1850, ryansMammoth; rows of" in out
