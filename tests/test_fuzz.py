"""Seeded fuzzing of everything that reads text a user or a model wrote: ABC tunes, data files, recipes, prompts
and sampling flags. Each input is a real one (a corpus tune, a shipped recipe) mutated; the promise is a
result or a one-line UserError, never another exception, and for the checker a verdict in bounded time."""

import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import REPO

from finetune.abc.check import analyse, check_tunes
from finetune.data import BUILTIN_DIR
from finetune.errors import UserError

# Pieces that mean something to ABC or to a parser: zero and huge numbers, lengths, brackets, quotes, field lines
# (header and inline), bar lines, tuplets, broken rhythm, NUL, non-ASCII, line breaks.
ABC_PIECES = [
    "0", "/0", "00", "99999", "9" * 40, "9" * 5000, "/", "//", "///////", "3/0", "0/0", "A/0", "c0", "z0", "x/0", "Z0",
    "Z99999999", "[", "]", "[[", "]]", "{", "}", "{/", "(", ")", "(3", "(3:0", "(3:0:0", "(9:99999:99999", "(2::",
    '"', '"Am', '""', "!", "!trill", "+", "+fermata", "|", "||", "|:", ":|", "::", ":::", "|]", "[|", "|1", ":|2",
    "[1", "[2,3", "| 1", "[M:3/0]", "[M:0/4]", "[L:1/0]", "[L:]", "[K:]", "[K:", "[M:", "[V:1]", "[Q:1/4=120]",
    "\nM:7/0\n", "\nM:0/0\n", "\nL:1/0\n", "\nL:1/3\n", "\nK:\n", "\nK:Zlydian\n", "\nV:2\n", "\nX:2\n", "\nT:",
    "\nM:99999999999999/1\n", "\nM:C|\n", "\nM:none\n", ">", ">>>", ">>>>", "<", "<<<<", "<>", "&", "\\", "\\\n", "%",
    "%%", "-", "--", "^", "^^^", "_", "__", "=", ",,,,", "''''", "y", "`", "\x00", "\t", "\r", "\r\n", "\n", "\n\n",
    "é", "ß", "茉莉花", "🎻", "\u0301", "\u200d", "\ufeff", "\ufffd", "\udcff",
]


def mutate(text: str, rng: random.Random, pieces: list, edits: int) -> str:
    """`edits` random insertions, replacements or deletions of pieces at random places."""
    for _ in range(edits):
        i = rng.randrange(len(text) + 1)
        op = rng.choice("irdd" if len(text) > 1 else "i")
        if op == "i":
            text = text[:i] + rng.choice(pieces) + text[i:]
        elif op == "r":
            text = text[:i] + rng.choice(pieces) + text[i + rng.randint(1, 4):]
        else:
            text = text[:i] + text[i + rng.randint(1, 8):]
    return text


@pytest.mark.integration
def test_checker_reads_any_mutated_tune_without_raising_in_bounded_time(corpus):
    """10,000 real tunes with 1-6 ABC-significant edits each: every one gets a report, none takes 1 s."""
    rng = random.Random(0)
    tunes = list(corpus["train"][:5000]) + list(corpus["validation"])
    slowest, invalid = (0.0, ""), 0
    for n in range(10_000):
        tune = mutate(tunes[n % len(tunes)], rng, ABC_PIECES, rng.randint(1, 6))
        start = time.perf_counter()
        report = analyse(tune)
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, tune))
        invalid += not report.valid
        assert 0 <= report.bars_off <= report.bars_total
    print(f"10,000 mutated tunes: {invalid} invalid, slowest {slowest[0] * 1000:.1f} ms")
    assert slowest[0] < 1.0, slowest[1][:300]
    assert invalid > 5_000  # the edits break most tunes, and the checker says so


@pytest.mark.integration
def test_transposer_moves_any_mutated_tune_or_says_why():
    """3,000 mutated real tunes moved by random shifts: a tune comes back, or None with a reason; never an
    exception, and a tune the checker passes before keeps its verdict after."""
    from finetune.abc.transpose import transpose

    rng = random.Random(5)
    tunes = [json.loads(line)["text"] for line in open(BUILTIN_DIR / "train.jsonl")][:3000]
    outcomes = {"moved": 0, "refused": 0}
    for n, tune in enumerate(tunes):
        tune = mutate(tune, rng, ABC_PIECES + ["\nK:D exp ^f\n", "[K:Bbmix]", '"C#m7/G#"', "^^", "__"], rng.randint(1, 6))
        moved, reason = transpose(tune, rng.randint(-12, 12))
        assert (moved is None) != (reason is None)
        outcomes["moved" if moved is not None else "refused"] += 1
        if moved is not None and n % 10 == 0:
            assert analyse(moved).valid == analyse(tune).valid, tune
    print(outcomes)
    assert outcomes["moved"] > 2000 and outcomes["refused"] > 0


@pytest.mark.integration
def test_rescaler_rewrites_any_mutated_tune_or_says_why():
    """3,000 mutated real tunes rewritten into another (M:, L:), mostly of the tune's family, some of none: a tune
    comes back, or None with a reason; never an exception. A rewritten tune differs in its header only, and
    keeps the checker's verdict (every bar lasts what it did, and so does the bar M: and L: ask for)."""
    from finetune.abc import header_length
    from finetune.abc.rescale import family, meter_pair, rescale

    rng = random.Random(6)
    tunes = [json.loads(line)["text"] for line in open(BUILTIN_DIR / "train.jsonl")][:3000]
    pairs = [(f"{p}/{q}", f"1/{n}") for p in (2, 3, 4, 6, 9, 12) for q in (2, 4, 8, 16) for n in (1, 2, 4, 8, 16, 32)]
    pairs += [("C", "1/8"), ("C|", "1/4"), ("0/4", "1/8"), ("3/4", "1/0"), ("3/4", "1/3"), ("none", "1/8"), ("6/8", "")]
    outcomes = Counter()
    for n, tune in enumerate(tunes):
        own = meter_pair(tune)
        mates = [pair for pair in pairs if own and family(*pair) == family(*own)]
        target = rng.choice(mates) if mates and rng.random() < 0.8 else rng.choice(pairs)
        tune = mutate(tune, rng, ABC_PIECES + ["\nQ:1/4=120\n", '\nQ:"Allegro" 3/8=90\n', "\nQ:C=80\n", "\nQ:1/0=90\n", "\nL:1/16\n"],
                      rng.randint(0, 6))
        rewritten, reason = rescale(tune, *target)
        assert (rewritten is None) != (reason is None)
        outcomes["rewritten" if rewritten is not None else "refused"] += 1
        if rewritten is not None:
            assert rewritten[header_length(rewritten):] == tune[header_length(tune):]
            if n % 5 == 0:
                before, after = analyse(tune), analyse(rewritten)
                assert (after.valid, after.bars_off) == (before.valid, before.bars_off), tune
    print(dict(outcomes))
    assert outcomes["rewritten"] > 1000 and outcomes["refused"] > 1000


def test_checker_flags_the_inputs_that_used_to_raise():
    """Zero lengths and zero meters are problems of the tune, with their reason."""
    for body, reason in [("A/0 B|", "no valid length"), ("c0 B|", "no valid length"), ("[M:3/0] AB|", "M:3/0 is not a meter"),
                         ("(3:0 ABC|", "is not a tuplet"), ("A" + "9" * 5000 + "|", "no valid length")]:
        report = analyse(f"M:2/4\nL:1/8\nK:D\n{body}\n")
        assert not report.valid and any(reason in e for e in report.errors), (body, report.errors)
    assert any("M:7/0" in e for e in analyse("M:7/0\nL:1/8\nK:D\nAB|\n").errors)


@pytest.mark.skipif(not shutil.which("abc2midi"), reason="abc2midi not installed (apt-get install abcmidi)")
@pytest.mark.integration
def test_abc2midi_checker_survives_mutated_tunes(corpus):
    """abc2midi runs on 120 mutated tunes, NUL and non-ASCII included, and every one gets a verdict."""
    rng = random.Random(1)
    tunes = [mutate(t, rng, ABC_PIECES, rng.randint(1, 6)) for t in list(corpus["validation"])[:120]]
    results = check_tunes(tunes, "abc2midi")
    assert len(results) == 120 and all(r["checker"] == "abc2midi" for r in results)
    assert sum(not r["valid"] for r in results) > 60


def test_checker_command_reads_random_bytes_as_tunes(tmp_path):
    """Random bytes named .abc: one JSON verdict per tune read, exit 0, nothing on stderr."""
    rng = random.Random(2)
    path = tmp_path / "noise.abc"
    path.write_bytes(b"X:1\nK:D\n" + bytes(rng.randrange(256) for _ in range(20_000)))
    result = subprocess.run([sys.executable, "-m", "finetune.abc.check", "--checker", "python", str(path)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert verdicts and not any(v["valid"] for v in verdicts)


# Pieces that mean something to JSON, CSV and Parquet readers.
FILE_PIECES = [b'"', b",", b"\n", b"\r\n", b"{", b"}", b"[", b"]", b":", b"null", b"true", b"1e999", b"-1", b"\\", b"\\u",
               b"\x00", b"\xff", b"\xc3", b"PAR1", b"text", b'"text"', b"\t"]


def real_data_files(corpus, folder):
    """The same 40 real tunes as .jsonl, .csv, .parquet and .abc files."""
    import datasets

    tunes = list(corpus["train"][:40])
    table = datasets.Dataset.from_dict({"text": tunes, "title": [f"t{i}" for i in range(40)]})
    table.to_json(folder / "tunes.jsonl")
    table.to_csv(folder / "tunes.csv", index=False)
    table.to_parquet(folder / "tunes.parquet")
    (folder / "tunes.abc").write_text("\n".join(f"X:{i}\n{t}" for i, t in enumerate(tunes)), encoding="utf-8")
    return [folder / f"tunes.{suffix}" for suffix in ("jsonl", "csv", "parquet", "abc")]


def load_prepared_or_streamed(data_args):
    """The training tunes as the runner reads them: prepared, or streamed through to packed rows."""
    from finetune.data import clean_splits, load_raw_splits
    from finetune.streaming import clean_streams, tokenize_and_pack_stream
    from finetune.tokenizer import build_abc_tokenizer

    if not data_args.streaming:
        return clean_splits(load_raw_splits(data_args), data_args)[0]["train"]
    streams = clean_streams(load_raw_splits(data_args), data_args)
    rows, _ = tokenize_and_pack_stream(streams, build_abc_tokenizer(256), 256, data_args, seed=0)
    return list(rows["train"])


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.integration
def test_data_loaders_read_mutated_files_or_say_why_in_one_line(streaming, corpus, tmp_path):
    """60 byte-level mutations of real data files of each kind, prepared or streamed: tunes come out, or a
    UserError says why in one line."""
    from finetune.args import DataArguments

    rng = random.Random(3)
    outcomes = {"loaded": 0, "refused": 0}
    for original in real_data_files(corpus, tmp_path):
        data = original.read_bytes()
        for n in range(15):
            folder = tmp_path / f"{original.suffix[1:]}-{n}"
            folder.mkdir()
            path = folder / original.name
            mutated = data
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(mutated) + 1)
                mutated = mutated[:i] + rng.choice(FILE_PIECES) + mutated[i + rng.choice([0, 0, 1, 5, 50]):]
            path.write_bytes(mutated if n else b"")  # the first of each kind is an empty file
            data_args = DataArguments(dataset_name_or_path=str(path), validation_split_percentage=10, streaming=streaming)
            try:
                assert len(load_prepared_or_streamed(data_args)) > 0
                outcomes["loaded"] += 1
            except UserError as e:
                assert "\n" not in str(e) and str(path) in str(e), str(e)
                outcomes["refused"] += 1
    print(outcomes)
    assert outcomes["loaded"] >= 5 and outcomes["refused"] >= 5  # both paths were taken


@pytest.mark.parametrize("cell", [None, 5, 2.5, True, ["M:2/4"], {"a": 1}, "", "   "])
def test_a_text_cell_that_is_not_a_tune_is_skipped_with_its_reason(cell, tmp_path):
    """JSONL rows whose text is null, a number, a list, a dict or blank are counted as skipped, not fatal."""
    from finetune.args import DataArguments
    from finetune.data import clean_splits, load_raw_splits

    good = [{"text": f"X:{i}\nM:2/4\nL:1/8\nK:D\n{''.join('CDEFGABc'[int(d)] for d in oct(i + 8)[2:])}|\n"} for i in range(60)]
    rows = good + [{"text": cell}] * 3
    path = tmp_path / "tunes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data_args = DataArguments(dataset_name_or_path=str(path), validation_split_percentage=10)
    try:
        _, skipped = clean_splits(load_raw_splits(data_args), data_args)
    except UserError as e:  # a column of mixed types that Arrow refuses to read
        assert "not readable as json" in str(e)
        return
    assert sum(skipped.values()) >= 3, skipped


RECIPE_VALUES = [None, -1, 0, 1, 0.5, -0.0, 1e308, 10**30, "", "x", "nan", "inf", "-inf", "1e-4", [], [1], {}, {"a": {}},
                 True, False, "music_abc.json", "../", "/", "\x00", "é"]


def mutate_recipe(recipe: dict, rng: random.Random, invented: list[str]) -> str:
    """The JSON text of `recipe` with 1 to 3 values swapped for values of every JSON type, keys dropped, or keys from
    `invented` added; in 3 of 10, its bytes edited too."""
    for _ in range(rng.randint(1, 3)):
        keys = list(recipe)
        kind = rng.random()
        if kind < 0.6 and keys:
            recipe[rng.choice(keys)] = rng.choice(RECIPE_VALUES)
        elif kind < 0.75 and keys:
            del recipe[rng.choice(keys)]
        else:
            recipe[rng.choice(keys + invented)] = rng.choice(RECIPE_VALUES)
    text = json.dumps(recipe)
    if rng.random() < 0.3:
        text = mutate(text, rng, ['"', "{", "}", ",", ":", "[", "]", "\\", "\x00", "é", "1e999", "null"], rng.randint(1, 3))
    return text


@pytest.mark.integration
def test_recipe_parser_takes_mutated_recipes_or_says_why(tmp_path):
    """1,000 mutated shipped recipes (values of every JSON type swapped in, keys dropped or invented, bytes edited):
    each parses, or raises one UserError that names the problem."""
    rng = random.Random(4)
    from finetune.recipe import parse_recipe

    recipes = sorted((REPO / "recipes").glob("*.json"))
    outcomes = {"parsed": 0, "refused": 0}
    for n in range(1000):
        source = rng.choice(recipes)
        recipe = json.loads(source.read_text())
        recipe["extends"] = str(source.parent / recipe["extends"]) if "extends" in recipe else None
        if recipe["extends"] is None:
            del recipe["extends"]
        text = mutate_recipe(recipe, rng, ["learning_rat", "", "x" * 300, "model_config"])
        path = tmp_path / f"r{n}.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            parse_recipe([str(path), "--output_dir", str(tmp_path / "out"), "--dry_run"])
            outcomes["parsed"] += 1
        except UserError as e:
            assert str(e).strip(), text
            outcomes["refused"] += 1
    print(outcomes)
    assert outcomes["refused"] > 500 and outcomes["parsed"] > 20


SAMPLING_VALUES = ["nan", "inf", "-inf", "-1", "0", "0.0", "1e999", "-0", "abc", "", "1.5", "3", "999999999999", "1e-300"]


def test_sampling_flags_are_taken_or_refused_in_one_line():
    """Every sampling flag with every awkward value: a usable setting or a UserError, never NaN or a crash."""
    import math

    from finetune.generation import SampleArguments
    from finetune.recipe import CliParser

    parser = CliParser((SampleArguments,), prog="sample.py", usage="")
    for flag in ("num_samples", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "batch_size"):
        for value in SAMPLING_VALUES:
            try:
                (args,) = parser.parse_command_line([f"--{flag}", value])
            except UserError as e:
                assert "\n" not in str(e)
                continue
            args = args.settled()  # the settings left unset take the defaults
            assert all(math.isfinite(v) for v in (args.temperature, args.top_p)), (flag, value)
            assert args.temperature > 0 and 0 < args.top_p <= 1 and args.top_k >= 0 and args.num_samples >= 1


@pytest.mark.integration
def test_a_recipes_sampling_settings_are_taken_or_refused_in_one_line(tmp_path):
    """500 `sampling` objects (the four settings, misspelt ones, every JSON type and awkward number) in a real recipe,
    from the file and as a flag: either the run samples with finite settings in range, or one UserError."""
    import math

    from finetune.generation import SampleArguments
    from finetune.recipe import parse_recipe

    rng = random.Random(12)
    good = {"temperature": [1.0, 0.8, 2, 1e-300], "top_k": [0, 1, 8, 10**30], "top_p": [0.7, 1, 1e-300], "min_p": [0, 0.1]}
    awkward = [*RECIPE_VALUES, float("nan")]
    names = [*good, *good, *good, "temprature", "top-p", "seed", ""]
    recipe = json.loads((REPO / "recipes" / "music_abc_cpu.json").read_text())
    recipe["extends"] = str(REPO / "recipes" / recipe["extends"])
    outcomes = {"parsed": 0, "refused": 0}
    for n in range(500):
        sampling = {}
        for name in rng.sample(names, rng.randint(1, 3)):
            sampling[name] = rng.choice(good[name] if name in good and rng.random() < 0.7 else awkward)
        flags = []
        if rng.random() < 0.5:
            flags = ["--sampling", json.dumps(sampling)]
        else:
            recipe["sampling"] = sampling
        path = tmp_path / f"r{n}.json"
        path.write_text(json.dumps(recipe))
        try:
            parsed = parse_recipe([str(path), *flags, "--output_dir", str(tmp_path / "out"), "--dry_run"])
        except UserError as e:
            assert "\n" not in str(e) and str(e).strip(), sampling
            outcomes["refused"] += 1
            continue
        args = SampleArguments().settled(parsed.model_args.sampling)
        assert math.isfinite(args.temperature) and args.temperature > 0 and 0 < args.top_p <= 1, sampling
        assert args.top_k >= 0 and 0 <= args.min_p < 1, sampling
        outcomes["parsed"] += 1
    print(outcomes)
    assert outcomes["refused"] > 100 and outcomes["parsed"] > 50


@pytest.mark.integration
def test_prompts_of_any_text_generate_or_are_refused(tmp_path):
    """300 prompts (real headers mutated with ABC pieces, random Unicode, empty, overlong): tunes or a UserError."""
    import torch
    from test_tokenizer import random_unicode
    from transformers import LlamaConfig, LlamaForCausalLM

    from finetune.generation import SampleArguments, generate_tunes, parse_prompt
    from finetune.tokenizer import build_abc_tokenizer

    tokenizer = build_abc_tokenizer(64)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    rng = random.Random(5)
    prompts = ["", "\\n", "M:6/8\\nL:1/8\\nK:D", "K:D" * 40]
    prompts += [mutate("M:6/8\\nL:1/8\\nR:jig\\nK:D", rng, ABC_PIECES, rng.randint(1, 4)) for _ in range(200)]
    prompts += [random_unicode(rng, rng.randint(0, 30)) for _ in range(96)]
    generated = refused = 0
    for prompt in prompts:
        try:
            (sample,) = generate_tunes(model, tokenizer, [parse_prompt(prompt)], SampleArguments(num_samples=1, max_new_tokens=4))
            assert sample.text.startswith(parse_prompt(prompt))
            generated += 1
        except UserError as e:
            assert "context" in str(e)
            refused += 1
    assert generated > 250 and refused >= 1
