"""Tunes in, a `DatasetDict` of clean tunes out: the built-in music21 corpus and every other source.

The built-in corpus is prepared once into `data/music21_abc/{train,validation,test}.jsonl` (one record
per tune) and read from there afterwards. Splits are chosen by a hash of each tune's cleaned text, so
they do not move when files are added or reordered, and an exact duplicate can never sit in two splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc

from .abc import Tune, clean_tune, read_text, split_tunes
from .abc.check import analyse
from .abc.layouts import from_folk_rnn, is_folk_rnn, session_tune
from .abc.rescale import family, meter_pair, rescale
from .abc.transpose import transpose
from .args import BUILTIN_DATASET, DataArguments
from .errors import UserError

# In a checkout the prepared corpus sits in data/, beside the script that prepares it; an installed package keeps it
# in the user's cache folder (XDG_CACHE_HOME, else ~/.cache), since site-packages may not be writable.
_CHECKOUT_DATA = Path(__file__).resolve().parent.parent / "data"
BUILTIN_DIR = (
    _CHECKOUT_DATA if (_CHECKOUT_DATA / "prepare_music21.py").is_file()
    else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "abc-finetune"
) / "music21_abc"
SPLITS = ("train", "validation", "test")
ABC_SUFFIXES = (".abc", ".txt")
TABLE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# Worker processes are slow to start: below this many tunes one process is faster.
PARALLEL_FROM_TUNES = 50_000
# Moving a tune by one shift costs about 7 times tokenizing it, so each shift counts as 7 tunes of work (docs/data.md).
TRANSPOSE_WEIGHT = 7


def content_key(text: str) -> int:
    """The first 8 bytes of the text's SHA-256, as a signed 64-bit number (an Arrow int64): it names a tune
    for deduplication (a collision among a million tunes has odds of 1 in 37 million) and picks its split."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big", signed=True)


def splits_of_keys(keys: np.ndarray, held_out_percent: int) -> np.ndarray:
    """'train', 'validation' or 'test' for each content key: `held_out_percent`% each for the last two."""
    bucket = keys.astype(np.int64).view(np.uint64) % 100
    return np.where(bucket < held_out_percent, "validation", np.where(bucket < 2 * held_out_percent, "test", "train"))


def split_of(text: str, held_out_percent: int) -> str:
    return str(splits_of_keys(np.array([content_key(text)]), held_out_percent)[0])


def worker_count(data_args: DataArguments, tunes: int, weight: int = 1) -> int | None:
    """`preprocessing_num_workers`, or when unset, every core for a large job and one process for a small one.

    A job is `tunes` times `weight`, the cost of one tune's work in tokenizations of a tune."""
    if data_args.preprocessing_num_workers is not None:
        return data_args.preprocessing_num_workers
    return len(os.sched_getaffinity(0)) if tunes * weight >= PARALLEL_FROM_TUNES else None


def numeric_columns(ds: datasets.Dataset, names: list[str]) -> dict[str, np.ndarray]:
    """Whole numeric columns as numpy arrays (a few bytes a tune), without building Python lists."""
    return ds.select_columns(names).with_format("numpy")[:]


def music21_corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def prepare_music21(out_dir: Path = BUILTIN_DIR, held_out_percent: int = 5) -> dict:
    """Write the music21 ABC corpus as cleaned, deduplicated, hash-split JSONL files; return the counts.

    The files appear all at once (written to a temporary folder, then renamed), so an interrupted prepare
    leaves nothing half-written behind and the next run starts it again. Two runs that prepare at once (two
    jobs on a fresh checkout, or two test workers) both succeed: the later rename finds the earlier one's
    folder, the same files from the same corpus, and keeps it.
    """
    root = music21_corpus_root()
    files = sorted(root.rglob("*.abc"))
    records = {split: [] for split in SPLITS}
    seen, skipped, raw_count = set(), Counter(), 0
    for path in files:
        for index, raw in enumerate(split_tunes(read_text(path))):
            raw_count += 1
            tune = clean_tune(raw)
            if isinstance(tune, str):
                skipped[tune] += 1
                continue
            if tune.text in seen:
                skipped["exact duplicate"] += 1
                continue
            seen.add(tune.text)
            record = {"text": tune.text, "title": tune.title, "source": f"{path.relative_to(root)}#{index}"}
            records[split_of(tune.text, held_out_percent)].append(record)
    stats = {
        "source": "music21 corpus (ABC files)",
        "files": len(files),
        "tunes_read": raw_count,
        "tunes_kept": {split: len(rows) for split, rows in records.items()},
        "skipped": dict(skipped),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        for split, rows in records.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the corpus is not
        try:
            os.replace(tmp, out_dir)
        except OSError:  # ENOTEMPTY: a complete folder is there, since folders only appear by this rename
            if not (out_dir / "stats.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _abc_records(paths: list[Path]):
    for path in paths:
        book = read_text(path)
        for index, raw in enumerate(from_folk_rnn(book) if is_folk_rnn(book) else split_tunes(book)):
            yield {"text": raw, "source": f"{path.name}#{index}"}


class RawSplits(dict):
    """A source's splits by name, and how its tunes were found where that is not plain (`layout`, for the plan)."""

    layout: str | None = None


# Tune columns found by name where the recipe leaves `text_column` at its default and the table has no `text`.
TUNE_COLUMNS = ("abc", "abc notation", "ABC", "abc_notation")
SESSION_COLUMNS = {"abc", "meter", "mode"}  # TheSession's dump: the header lives in columns


def _session_batch(batch: dict) -> dict:
    columns = ("name", "type", "meter", "mode", "abc")
    rows = zip(*(batch.get(c, [None] * len(batch["abc"])) for c in columns))
    return {
        "text": [session_tune(*row) for row in rows],
        "group": [str(tune_id) for tune_id in batch.get("tune_id", batch.get("setting_id", [None] * len(batch["abc"])))],
    }


def _layout_of(paths: list[Path]) -> str | None:
    if any(p.suffix in ABC_SUFFIXES and is_folk_rnn(read_text(p)) for p in paths):
        return "folk-rnn's token layout: tokens joined, K:Cmaj written K:C, L:1/8 added"
    return None


def _load_files(paths: list[Path], text_column: str, streaming: bool = False) -> tuple:
    """One dataset with a `text` column from files of one kind (ABC text, or a table format), and how its tunes
    were found where the layout is not plain (None otherwise)."""
    suffixes = {p.suffix for p in paths}
    if suffixes <= set(ABC_SUFFIXES):
        if streaming:
            return datasets.IterableDataset.from_generator(_abc_records, gen_kwargs={"paths": paths}), _layout_of(paths)
        tunes = datasets.Dataset.from_list(list(_abc_records(paths)) or [{"text": "", "source": ""}])
        return tunes.filter(lambda row: bool(row["text"])), _layout_of(paths)
    if len(suffixes) > 1 or not suffixes <= set(TABLE_BUILDERS):
        raise UserError(f"mixed or unknown data file types {sorted(suffixes)}; use one of {', '.join(TABLE_BUILDERS)} or .abc/.txt")
    builder = TABLE_BUILDERS[suffixes.pop()]
    try:
        with quiet_logger("datasets"):  # a file it cannot read is reported below, in one line
            table = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train", streaming=streaming)
    except Exception as e:  # datasets and pyarrow raise many types for a file they cannot read
        if _holds_no_rows(paths, builder) or "corresponds to no data" in str(e):
            raise UserError(f"{paths[0]}: no rows; add tunes to the file") from None
        raise UserError(f"{paths[0]}: not readable as {builder} ({root_reason(e)}); check the file's format") from None
    return _text_column(table, text_column, paths[0].parent)


@contextlib.contextmanager
def quiet_logger(name: str, level: int = logging.CRITICAL):
    """The logger `name` says only what reaches `level` meanwhile: datasets logs a file it cannot read before
    raising, which the caller reports instead, in one line."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def root_reason(error: BaseException) -> str:
    """The innermost exception's last line: the reader's own words, not datasets' wrapper."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]


def _holds_no_rows(paths: list[Path], builder: str) -> bool:
    if all(p.stat().st_size == 0 for p in paths):
        return True
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(p).metadata.num_rows for p in paths) == 0
        except Exception:  # not a parquet file at all: that is the other message
            return False
    return False


def _text_column(table, text_column: str, where) -> tuple:
    """The table with its tunes in a `text` column, and how they were found (None: the column asked for)."""
    columns = table.column_names
    if columns is not None and text_column in ("text", "abc") and "text" not in columns and SESSION_COLUMNS <= set(columns):
        grouped = "tune_id" in columns or "setting_id" in columns
        table = table.map(_session_batch, batched=True, remove_columns=columns, desc="TheSession's tunes")
        return table, (
            "TheSession's layout: headers written from name, type, meter and mode (L:1/8)"
            + ("; a tune's settings share a split (tune_id)" if grouped else "")
        )
    if columns is not None and text_column == "text" and "text" not in columns:
        found = next((name for name in TUNE_COLUMNS if name in columns), None)
        if found is not None:
            dropped = [name for name in columns if name != found and name in ("control code", "control_code")]
            note = f"tune column '{found}' found by name" + (f"; its {dropped[0]!r} column is dropped" if dropped else "")
            return table.rename_column(found, "text"), note
    if columns is not None and text_column not in columns:  # a stream may not know yet
        raise UserError(
            f"{where}: no column '{text_column}' (columns: {', '.join(columns)}); set 'text_column'"
        )
    if text_column != "text":
        table = table.rename_column(text_column, "text")
    return table, None


def _raw_splits(loaded: dict[str, tuple]) -> RawSplits:
    splits = RawSplits({name: table for name, (table, _) in loaded.items()})
    splits.layout = next((layout for _, layout in loaded.values() if layout), None)
    return splits


def _local_splits(path: Path, text_column: str, streaming: bool = False) -> RawSplits:
    if path.is_file():
        return _raw_splits({"all": _load_files([path], text_column, streaming)})
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (*ABC_SUFFIXES, *TABLE_BUILDERS))
    if not files:
        raise UserError(f"{path}: no .abc/.txt/.jsonl/.json/.csv/.parquet files in this folder")
    named = {split: [p for p in files if p.stem == split] for split in SPLITS}
    if named["train"]:
        return _raw_splits({split: _load_files(paths, text_column, streaming) for split, paths in named.items() if paths})
    return _raw_splits({"all": _load_files(files, text_column, streaming)})


def load_raw_splits(data_args: DataArguments) -> RawSplits:
    """The source's splits, each with a `text` column of raw tunes (cleaning comes next): `Dataset`s, or
    `IterableDataset`s with `streaming: true`; only the tunes of the recipe's `sources`, less its `exclude_sources`."""
    splits = _all_raw_splits(data_args)
    include, exclude = data_args.sources, data_args.exclude_sources
    if not (include or exclude):
        return splits
    where = data_args.dataset_name_or_path
    if any(table.column_names is not None and "source" not in table.column_names for table in splits.values()):
        raise UserError(
            f"dataset '{where}': its tunes name no source, so 'sources'/'exclude_sources' cannot choose among them; "
            "unset them, or give the tunes as a folder of tune books (each file is a source)"
        )
    tables = [table for table in splits.values() if isinstance(table, datasets.Dataset)]
    if tables:  # a stream is not read ahead to check the names
        known = {source_name(str(s)) for t in tables for s in pc.unique(t.data.column("source")).to_pylist() if s}
        unknown = [name for name in include + exclude if not any(_named_by(s, [name]) for s in known)]
        if unknown:
            collections = sorted({s.split("/")[0] for s in known})
            raise UserError(
                f"dataset '{where}': no tune comes from {', '.join(map(repr, unknown))}; its sources are "
                f"{', '.join(collections[:20])}{' ...' if len(collections) > 20 else ''}"
            )
    kwargs = {"batched": True, "fn_kwargs": {"include": include, "exclude": exclude}}
    chosen = RawSplits({
        name: table.filter(_keeps_sources, **kwargs, **({} if isinstance(table, datasets.IterableDataset)
                                                          else {"desc": "choose sources"}))
        for name, table in splits.items()
    })
    chosen.layout = splits.layout
    return chosen


def source_name(source: str) -> str:
    """A tune's collection and file: `oneills1850/oneills1850.abc` of `oneills1850/oneills1850.abc#12`."""
    return source.rpartition("#")[0] or source


def _named_by(source: str, names: list[str]) -> bool:
    where = source_name(source)
    return any(where == name or where.startswith(name.rstrip("/") + "/") for name in names)


def _keeps_sources(batch: dict, include: list[str], exclude: list[str]) -> list[bool]:
    sources = [str(s) if s is not None else "" for s in batch["source"]]
    return [(not include or _named_by(s, include)) and not _named_by(s, exclude) for s in sources]


def _all_raw_splits(data_args: DataArguments) -> RawSplits:
    name = data_args.dataset_name_or_path
    if name == BUILTIN_DATASET:
        if not (BUILTIN_DIR / "stats.json").is_file():
            print(f"Preparing the music21 ABC corpus into {BUILTIN_DIR} (once) ...", flush=True)
            stats = prepare_music21()
            print(f"  kept {stats['tunes_kept']}, skipped {stats['skipped']}", flush=True)
        return _local_splits(BUILTIN_DIR, "text", data_args.streaming)
    path = Path(name).expanduser()
    if path.exists():
        return _local_splits(path, data_args.text_column, data_args.streaming)
    try:
        hub = datasets.load_dataset(name, streaming=data_args.streaming)
    except Exception as e:  # datasets raises many types for "not found" and "offline"
        raise UserError(f"dataset '{name}': not a local path and could not be loaded from the hub ({type(e).__name__})") from None
    return _raw_splits({split: _text_column(ds, data_args.text_column, name) for split, ds in hub.items()})


def _clean_one(text, keep_fields: str, clean_abc: bool) -> Tune | str:
    """The cleaned tune, or why it is skipped: a data file's text cell may be empty, null, or not text at all."""
    if text is not None and not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string"
    if not text or not text.strip():
        return "empty text"
    return clean_tune(text, keep_fields=keep_fields) if clean_abc else Tune(text=text, title="")


def clean_batch(batch: dict, keep_fields: str, clean_abc: bool) -> dict:
    results = [_clean_one(text, keep_fields, clean_abc) for text in batch["text"]]
    texts = [r.text if isinstance(r, Tune) else "" for r in results]
    keys = [content_key(text) for text in texts]
    return {
        "text": texts,
        "skip_reason": ["" if isinstance(r, Tune) else r for r in results],
        "key": keys,
        # the split follows a tune's group where the source names one (TheSession: a tune's settings), else the tune
        "split_key": [content_key(group) for group in batch["group"]] if "group" in batch else keys,
    }


def _drop_duplicates(splits: dict[str, datasets.Dataset], skipped: Counter) -> None:
    """Keep the first copy of each tune, in train, validation, test order: held-out tunes stay unseen.

    Tunes are compared by content key, 8 bytes a tune, so memory does not hold the texts.
    """
    order = sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else -1)
    keys = [numeric_columns(splits[split], ["key"])["key"] for split in order]
    _, first = np.unique(np.concatenate(keys), return_index=True)
    is_first = np.zeros(sum(len(k) for k in keys), dtype=bool)
    is_first[first] = True
    start = 0
    for split, split_keys in zip(order, keys):
        keep = np.flatnonzero(is_first[start : start + len(split_keys)])
        start += len(split_keys)
        if len(keep) < len(split_keys):
            skipped["exact duplicate"] += len(split_keys) - len(keep)
            splits[split] = splits[split].select(keep)


def clean_splits(raw: dict[str, datasets.Dataset], data_args: DataArguments) -> tuple[datasets.DatasetDict, dict]:
    """Clean every tune, drop unusable ones (counted by reason), and make train/validation(/test) splits."""
    skipped = Counter()
    cleaned = {}
    for split, ds in raw.items():
        if len(ds) == 0:  # an empty file: datasets.map would not even add the skip_reason column
            continue
        ds = ds.map(
            clean_batch,
            batched=True,
            fn_kwargs={"keep_fields": data_args.keep_fields, "clean_abc": data_args.clean_abc},
            num_proc=worker_count(data_args, len(ds)),
            desc=f"clean {split}",
        )
        reasons = ds.select_columns(["skip_reason"]).with_format("arrow")[:].column(0)
        skipped.update({r["values"]: r["counts"] for r in pc.value_counts(reasons).to_pylist() if r["values"]})
        cleaned[split] = ds.select(np.flatnonzero(pc.equal(reasons, "").to_numpy(zero_copy_only=False)))
        cleaned[split] = cleaned[split].remove_columns("skip_reason")
    if sum(len(ds) for ds in cleaned.values()) == 0:
        raise UserError(f"dataset '{data_args.dataset_name_or_path}': no usable training tunes (skipped: {dict(skipped) or 'none'})")
    _drop_duplicates(cleaned, skipped)
    if "validation" not in cleaned:
        pool = datasets.concatenate_datasets([cleaned.pop(s) for s in list(cleaned) if s != "test"])
        pct = data_args.validation_split_percentage
        assigned = splits_of_keys(numeric_columns(pool, ["split_key"])["split_key"], pct)
        for split in ("train", "validation") if "test" in cleaned else SPLITS:
            cleaned[split] = pool.select(np.flatnonzero(assigned == split))
    if data_args.train_tunes == "meter" and "train" in cleaned:
        before = len(cleaned["train"])
        cleaned["train"] = cleaned["train"].filter(
            keeps_meter, batched=True, num_proc=worker_count(data_args, before), desc="keep train tunes on the meter"
        )
        if len(cleaned["train"]) < before:
            skipped[OFF_METER] += before - len(cleaned["train"])
    if len(cleaned.get("train", [])) == 0:
        raise UserError(f"dataset '{data_args.dataset_name_or_path}': no usable training tunes (skipped: {dict(skipped) or 'none'})")
    if len(cleaned["validation"]) == 0:
        raise UserError(
            f"dataset '{data_args.dataset_name_or_path}': the validation split is empty; "
            "raise 'validation_split_percentage' or add a validation file"
        )
    if data_args.max_train_samples:
        cleaned["train"] = cleaned["train"].select(range(min(data_args.max_train_samples, len(cleaned["train"]))))
    if data_args.max_eval_samples:
        cleaned["validation"] = cleaned["validation"].select(
            range(min(data_args.max_eval_samples, len(cleaned["validation"])))
        )
    cleaned = {split: ds.remove_columns([c for c in ("key", "split_key", "group") if c in ds.column_names])
               for split, ds in cleaned.items()}
    if data_args.balance_meters:  # after the split, so that copies are of training tunes and stay in train
        cleaned["train"] = with_rescaled_copies(cleaned["train"].select_columns(["text"]), data_args)
    if data_args.transpose_train:  # after the split, so that a tune's copies stay in train with it
        cleaned["train"] = cleaned["train"].select_columns(["text"]).map(
            with_transposed_copies,
            batched=True,
            fn_kwargs={"shifts": data_args.transpose_train},
            num_proc=worker_count(data_args, len(cleaned["train"]), TRANSPOSE_WEIGHT * len(data_args.transpose_train)),
            desc="transpose train",
        )
    return datasets.DatasetDict(cleaned), dict(skipped)


OFF_METER = "a bar off the meter (train_tunes: meter)"


def keeps_meter(batch: dict) -> list[bool]:
    """datasets' batched filter for `train_tunes: meter`: does every bar of each tune keep the meter?"""
    return [analyse(text, strict_syntax=False).bars_off == 0 for text in batch["text"]]


# The least number of training tunes an (M:, L:) pair needs to be topped up by `balance_meters`: a pair that
# one tune writes may be a slip; two make it notation in use. The seed makes the copies the same at every run.
BALANCE_MIN_TUNES = 2
BALANCE_SEED = 3407


def meter_pairs(batch: dict) -> dict:
    """datasets' batched map: each tune's (M:, L:) when it can be rescaled (finetune/abc/rescale.py), else ''."""
    pairs = [meter_pair(text) for text in batch["text"]]
    return {"meter": [p[0] if p else "" for p in pairs], "unit": [p[1] if p else "" for p in pairs]}


def with_rescaled_copies(train: datasets.Dataset, data_args: DataArguments) -> datasets.Dataset:
    """`balance_meters`: each (M:, L:) pair that at least BALANCE_MIN_TUNES and fewer than `balance_meters`
    training tunes write gets copies of tunes of its family (the same bars at another note value: 6/8 with
    L:1/8 for 6/4 with L:1/4), drawn without repeats, until it has `balance_meters` tunes or its family has
    no more. The rare meters are where a model miscounts its bars; the copies teach it their bar length on
    music it already reads in common ones."""
    up_to = data_args.balance_meters
    read = train.map(meter_pairs, batched=True, num_proc=worker_count(data_args, len(train)), desc="read meters")
    tunes_of = defaultdict(list)
    for index, pair in enumerate(zip(read["meter"], read["unit"])):
        if pair[0]:
            tunes_of[pair].append(index)
    families = defaultdict(list)
    for pair in tunes_of:
        families[family(*pair)].append(pair)
    rng = random.Random(BALANCE_SEED)
    sources, targets = [], []
    for pair in sorted(tunes_of):
        have = len(tunes_of[pair])
        if not BALANCE_MIN_TUNES <= have < up_to:
            continue
        pool = sorted(i for other in families[family(*pair)] if other != pair for i in tunes_of[other])
        chosen = rng.sample(pool, min(up_to - have, len(pool)))
        sources += chosen
        targets += [pair] * len(chosen)
    if not sources:
        return train
    copies = train.select(sources).map(
        rescaled_batch, batched=True, with_indices=True, fn_kwargs={"targets": targets}, desc="rescale train"
    )
    return datasets.concatenate_datasets([train, copies])


def rescaled_batch(batch: dict, indices: list[int], targets: list[tuple[str, str]]) -> dict:
    """datasets' batched map: each tune rewritten in its target (M:, L:); one that cannot be is left out."""
    rewritten = (rescale(text, *targets[i])[0] for text, i in zip(batch["text"], indices))
    return {"text": [text for text in rewritten if text is not None]}


def with_transposed_copies(batch: dict, shifts: list[int]) -> dict:
    """The tunes, then each moved by each shift; a tune that cannot be moved exactly adds no copy."""
    copies = [moved for text in batch["text"] for n in shifts if (moved := transpose(text, n)[0]) is not None]
    return {"text": batch["text"] + copies}
