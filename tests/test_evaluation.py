"""Evaluation: the ABC checker on real and corrupted corpus tunes, the metric modules, sample.py and
evaluate_checkpoints.py over a real run directory."""

import csv
import json
import math
import random
import re
import shutil
import string
import subprocess
import sys
from fractions import Fraction

import pytest
import torch
from conftest import REPO, TINY_RECIPE, run_cli, run_finetune

from finetune.abc import header_length
from finetune.abc.check import analyse, check_tunes, run_abc2midi
from finetune.abc.reader import bar_units, parse_meter
from finetune.evaluation.token_metrics import load_metric

CHECKERS = ["python", pytest.param("abc2midi", marks=pytest.mark.skipif(not shutil.which("abc2midi"), reason="abc2midi not installed (apt-get install abcmidi)"))]


def corrupt(tune: str, rng: random.Random, edits: int = 3) -> str:
    """A few random character edits anywhere in the tune: delete, insert or replace with printable ASCII."""
    chars = list(tune)
    for _ in range(edits):
        i, op, new = rng.randrange(len(chars)), rng.choice("idr"), rng.choice(string.printable[:95])
        if op == "i":
            chars.insert(i, new)
        elif op == "d":
            del chars[i]
        else:
            chars[i] = new
    return "".join(chars)


@pytest.mark.parametrize("checker", CHECKERS)
def test_checker_passes_real_tunes_and_flags_corrupted_ones(corpus, checker):
    """>= 85% of held-out real tunes pass; >= 85% of the same tunes after 3 random character edits fail."""
    real = corpus["validation"]
    rng = random.Random(0)
    corrupted = [corrupt(tune, rng) for tune in real]
    passed = sum(r["valid"] for r in check_tunes(real, checker)) / len(real)
    flagged = sum(not r["valid"] for r in check_tunes(corrupted, checker)) / len(corrupted)
    print(f"{checker}: {passed:.1%} of {len(real)} real tunes pass, {flagged:.1%} of corrupted ones are flagged")
    assert passed >= 0.85 and flagged >= 0.85


def test_bar_durations_allow_pickups_repeats_and_split_bars_but_not_broken_bars():
    tune = "M:6/8\nL:1/8\nK:D\nA|d2d dcd|(3efg f e2A|\nB3 A2|:\nA|d>e f/g/ a3:|\n"
    report = analyse(tune)
    # pickup A; (3efg = 2 units, so bar 3 is 2+1+2+1 = 6; `B3 A2` + `A` split across a repeat; d>e = 1.5+0.5
    assert report.valid, report.errors
    assert report.bars_total == 6 and report.bars_off == 0
    broken = analyse("M:6/8\nL:1/8\nK:D\nA|d2d dcd|efg fe|d2d dcd|d3 d2A|\n")
    assert broken.bars_off == 1 and not broken.valid and "bar 3 lasts 5 units" in broken.errors[0]
    # Essen-style: a full bar at the end of a line needs no bar line.
    assert analyse("M:3/8\nL:1/16\nK:G\nd4A2 | A4d2 | d6\nd4d2 | c6\n").valid


@pytest.mark.skipif(not shutil.which("abc2midi"), reason="abc2midi not installed (apt-get install abcmidi)")
@pytest.mark.parametrize("meter", ["6/8", "9/8", "12/8", "3+3/8", "6/4", "3/4", "3/8", "2/4", "C", "5/8", "3+2/8"])
def test_tuplets_of_five_seven_nine_last_what_abc2midi_says_in_every_meter(meter, tmp_path):
    """(5 (7 (9 take the time of three where the written numerator is a multiple of 3, of two otherwise: the reader
    agrees with abc2midi on which reading fills a bar, also where the bar length reduces (6/8 is as long as 3/4)."""
    units = bar_units(parse_meter(meter), Fraction(1, 8))
    for p, notes in ((5, "ABcde"), (7, "ABcdefg"), (9, "ABcdefgab")):
        verdicts = {}
        for q in (3, 2):
            rest = f" z{units - q}" if units > q else ""
            tune = f"M:{meter}\nL:1/8\nK:D\nz{units}|({p}{notes}{rest}|z{units}|\n"
            out = run_abc2midi(f"X:1\n{tune}", tmp_path, "-c")  # its bar warnings, which the checker leaves to the reader
            verdicts[q] = (analyse(tune).bars_off == 0, "time units" not in out.stdout + out.stderr)
        assert verdicts[3][0] == verdicts[3][1] and verdicts[2][0] == verdicts[2][1], (meter, p, verdicts)
        assert verdicts[3][0] != verdicts[2][0], (meter, p, verdicts)  # one reading fills the bar, the other not


def shuffled_body(tune: str, rng: random.Random) -> str:
    """The tune with its header kept and every character of its body in random order."""
    cut = header_length(tune)
    body = list(tune[cut:])
    rng.shuffle(body)
    return tune[:cut] + "".join(body)


def untrained_samples(count: int = 64, constrain: str = "none") -> list[str]:
    """Tunes from an untrained model (the test recipe's model, fresh weights) prompted with real headers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune.generation import SampleArguments, generate_tunes
    from finetune.tokenizer import build_abc_tokenizer

    tokenizer = build_abc_tokenizer(256)
    recipe = json.loads(TINY_RECIPE.read_text())["model_config"]
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **recipe)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = ["M:6/8\nL:1/8\nK:D\n", "M:4/4\nL:1/8\nK:G\n", "M:3/4\nL:1/8\nK:Ador\n", "M:2/4\nL:1/16\nK:C\n"] * (count // 4)
    args = SampleArguments(num_samples=count, max_new_tokens=200, constrain=constrain)
    return [s.text for s in generate_tunes(model, tokenizer, prompts, args)]


def test_bar_consistency_is_high_for_real_tunes_and_low_for_noise(corpus):
    """The metric can fail: >= 0.95 on real held-out tunes, <= 0.2 when their body characters are shuffled,
    <= 0.15 on an untrained model's tunes, whose bars a lenient rule would count as on the metre."""
    metric = load_metric("abc_validity")
    real = list(corpus["validation"])
    rng = random.Random(0)
    scores = {
        "real": metric.compute(predictions=real, checker="python")["bar_consistency"],
        "shuffled": metric.compute(predictions=[shuffled_body(t, rng) for t in real], checker="python")["bar_consistency"],
        "untrained": metric.compute(predictions=untrained_samples(), checker="python")["bar_consistency"],
    }
    print(scores)
    assert scores["real"] >= 0.95 and scores["shuffled"] <= 0.2 and scores["untrained"] <= 0.15


def test_short_bars_count_only_where_abc_practice_writes_them():
    """A short bar beside a repeat is off unless it completes a bar with its neighbour or the section's pickup."""
    on = analyse("M:6/8\nL:1/8\nK:D\nA|d2d dcd|d3 d2:|\n")  # pickup A balances d3 d2 before the repeat
    assert on.bars_off == 0 and on.bars_total == 3
    off = analyse("M:6/8\nL:1/8\nK:D\nd2d dcd|d3 :|d2d dcd|d2d dcd|\n")  # a lone 3-unit bar before `:|`
    assert off.bars_off == 1
    garbage = analyse("M:6/8\nL:1/8\nK:D\nd2d dcd|xxQQxxQx:|d2d dcd|\n")  # unreadable text: never on the metre
    assert garbage.bars_off == 1


def test_missing_key_bad_meter_and_stray_characters_are_errors():
    assert any("no K: field" in e for e in analyse("M:6/8\nL:1/8\nabc|\n").errors)
    assert any("M:6/$" in e for e in analyse("M:6/$\nL:1/8\nK:D\nabc def|\n").errors)
    assert any("unexpected '#'" in e for e in analyse("M:3/4\nL:1/8\nK:D\nab#c def|\n").errors)


def test_abc_check_command_prints_one_json_object_per_tune(tmp_path):
    book = tmp_path / "book.abc"
    book.write_text("X:1\nT:Good\nM:2/4\nL:1/8\nK:D\nABcd|efga|\n\nX:2\nT:Broken\nM:2/4\nL:1/8\nK:D\nABcd|ef#g|\n")
    result = subprocess.run([sys.executable, "-m", "finetune.abc.check", str(book)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tunes = [json.loads(line) for line in result.stdout.splitlines()]
    keys = {"file", "index", "title", "valid", "errors", "bars_total", "bars_off", "checker"}
    assert [t["title"] for t in tunes] == ["Good", "Broken"] and all(keys <= t.keys() for t in tunes)
    assert tunes[0]["valid"] and not tunes[1]["valid"] and tunes[0]["bars_total"] == 2
    missing = subprocess.run([sys.executable, "-m", "finetune.abc.check", str(tmp_path / "nope.abc")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr


def test_metric_modules_load_from_local_paths_and_compute():
    load = load_metric
    assert load("next_token_accuracy").compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 4]) == {"accuracy": 0.75}
    bits = load("bits_per_char").compute(nll=[math.log(2)] * 4, chars=[1, 1, 2, 0])["bits_per_char"]
    assert bits == pytest.approx(1.0)
    validity = load("abc_validity").compute(predictions=["M:2/4\nL:1/8\nK:D\nABcd|efga|\n", "M:2/4\nL:1/8\nK:D\nAB|cdef|\nef#g|\n"])
    assert validity["validity"] == 0.5
    adherence = load("header_adherence").compute(
        predictions=["M:6/8\nK:D\nABc|[M:2/4]AB|\n", "M:6/8\nK:D\nABc def|\n"], references=["M:6/8\nK:D\n"] * 2
    )
    assert adherence["header_adherence"] == 0.75
    tune = "M:6/8\nK:D\nABc def|gfe dcB|\n"
    novelty = load("abc_novelty").compute(predictions=[tune, "M:6/8\nK:D\nzzz zzz|\n"], training_tunes=[tune, "K:G\nGAB|\n"])
    assert novelty["copy_max"] == pytest.approx(1.0) and novelty["copy_share"] == 0.5 and novelty["diversity"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny run with checkpoints at steps 3, 6 and 9, trained hard enough for bits per char to fall."""
    out = tmp_path_factory.mktemp("eval") / "run"
    run_finetune(
        TINY_RECIPE, "--max_steps", 9, "--save_steps", 3, "--eval_steps", 3, "--learning_rate", "3e-3",
        "--bf16", "false", "--optim", "adamw_torch", "--output_dir", out,
    )
    return out


def evaluate_run(*args):
    return subprocess.run(
        [sys.executable, "evaluate_checkpoints.py", *map(str, args)], cwd=REPO, capture_output=True, text=True
    )


def evaluate_here(capsys, *args):
    """evaluate_checkpoints.py ARGS in this process: (exit code, stdout, stderr)."""
    return run_cli(args, capsys, "evaluate_checkpoints")


@pytest.fixture(scope="module")
def evaluation(run_dir):
    """evaluate_checkpoints.py over the run, with the HTML report: (the finished process, RUN_DIR/eval)."""
    result = evaluate_run(run_dir, "--num_samples", 4, "--max_new_tokens", 48, "--report")
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir / "eval"


def test_evaluate_checkpoints_writes_every_output_with_a_reference_row(evaluation):
    result, out = evaluation
    report = json.loads((out / "metrics.json").read_text())
    # the final model is step 9: not counted twice; each checkpoint's own tunes, then its constrained ones
    assert [(row["step"], row["tunes"]) for row in report["rows"]] == [
        (step, kind) for step in (3, 6, 9) for kind in ("own", "constrained")
    ]
    own = [row for row in report["rows"] if row["tunes"] == "own"]
    bits = [row["bits_per_char"] for row in own]
    assert bits[-1] < bits[0]
    for own_row, constrained_row in zip(own, report["rows"][1::2]):  # one checkpoint's token metrics, twice
        assert own_row["bits_per_char"] == constrained_row["bits_per_char"]
    assert sorted(report["settings"]["tunes"]) == ["constrained", "own"]
    reference = report["reference"]
    assert reference["validity"] >= 0.5 and "loss" not in reference and 0 <= reference["loops"] <= 1
    assert reference["truncation"] == 1.0  # the 48 new tokens each sample gets would cut off every real tune too
    assert report["settings"]["sampling"]["top_k"] == 8 and report["settings"]["prompts"] == 4
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["tunes"]) for r in rows][-3:] == [("9", "own"), ("9", "constrained"), ("reference", "real")]
    assert (out / "metrics.md").read_text() in result.stdout and (out / "metrics.png").stat().st_size > 10_000
    for step, kind in ((3, ""), (6, ""), (9, ""), (3, "-constrained"), (9, "-constrained")):
        samples = out / "samples" / f"step-{step}{kind}"
        assert len(list(samples.glob("*.abc"))) == 4
        records = [json.loads(line) for line in (samples / "samples.jsonl").read_text().splitlines()]
        assert all(r["text"].startswith(r["prompt"]) and r["prompt"].startswith("M:") for r in records)
        assert all((samples / r["midi"]).is_file() for r in records if r["midi"])
        assert all(isinstance(r["valid"], bool) for r in records)  # the checker's verdict, kept with the tune
    # The same prompts and seed: constrained tunes differ from the model's own where the mask changed a choice.
    own_texts, constrained_texts = (
        [json.loads(line)["text"] for line in (out / "samples" / f"step-9{kind}" / "samples.jsonl").read_text().splitlines()]
        for kind in ("", "-constrained")
    )
    assert own_texts != constrained_texts
    real = [json.loads(line) for line in (out / "samples" / "reference" / "samples.jsonl").read_text().splitlines()]
    assert len(real) == 4 and sum(r["midi"] is not None for r in real) >= 3  # music21 reads real tunes


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="Chromium not installed (apt-get install chromium chromium-driver)")
def test_report_renders_every_tune_offline_in_headless_chromium(evaluation, tmp_path):
    """One SVG score and one play button per tune shown, no console error, no network; a screenshot."""
    _, out = evaluation
    page = out / "report.html"
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?https?:""", text)  # everything is inside the file
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=20000", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    shown = 2 * 2 * 4 * 2  # first and last step, own and constrained, 4 samples each, each beside its real tune
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert dom.stdout.count('class="pair constrained"') == 2 * 4  # the report marks which tunes were constrained
    assert f'data-rendered="{shown}"' in body and 'data-errors="0"' in body, body
    scores = re.findall(r'id="([^"]+)-score"[^>]*><svg', dom.stdout)
    assert len(scores) == shown and len(set(scores)) == shown
    assert len(re.findall(r'class="play" id="[^"]+-play"', dom.stdout)) == shown
    # console.error and uncaught errors are counted by the page itself (data-errors); Chromium logs every
    # console message at one level, and abcjs writes debug notes about garbled samples with console.log.
    assert not [line for line in dom.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line]
    shot = tmp_path / "report.png"
    subprocess.run([*browser, "--hide-scrollbars", "--window-size=1300,1800", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=180)
    assert shot.stat().st_size > 50_000


def test_sample_py_writes_abc_and_midi_and_repeats_with_the_same_seed(run_dir, tmp_path):
    outputs = []
    for name in ("a", "b"):
        result = subprocess.run(
            [sys.executable, "sample.py", str(run_dir), "--prompt", "M:6/8\\nL:1/8\\nK:D", "--num_samples", "3",
             "--max_new_tokens", "40", "--out", str(tmp_path / name)],
            cwd=REPO, capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append([p.read_text() for p in sorted((tmp_path / name).glob("*.abc"))])
    assert len(outputs[0]) == 3 and outputs[0] == outputs[1]
    assert all(text.startswith("X:1\nT:run sample 1\nM:6/8\nL:1/8\nK:D\n") for text in outputs[0][:1])
    assert "M:6/8" in result.stdout and "Wrote 3 tunes" in result.stdout


def test_a_run_samples_as_its_recipe_says_unless_a_flag_says_otherwise(run_dir, tmp_path, capsys):
    """A recipe's `sampling` reaches sample.py, for the run and for its checkpoints, and evaluate_checkpoints.py; a
    flag wins over it. top_k 1 in the recipe makes every seed write the same tune; the defaults (top_k 8) do not."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("eval", "samples"))

    def tunes(model, *flags):
        out = tmp_path / f"tunes{len(list(tmp_path.glob('tunes*')))}"
        code, stdout, stderr = run_cli([model, "--prompt", "M:6/8\\nL:1/8\\nK:D", "--num_samples", "2", "--max_new_tokens",
                                        "40", "--out", out, *flags], capsys, "sample")
        assert code == 0, stderr[-2000:]
        printed.append(stdout.splitlines()[-1])  # "Wrote 2 tunes to ...; sampled at temperature ..."
        return [p.read_text() for p in sorted(out.glob("*.abc"))]

    printed = []
    assert tunes(run, "--seed", "1") != tunes(run, "--seed", "2")  # the defaults sample
    recipe = json.loads((run / "recipe.json").read_text())
    (run / "recipe.json").write_text(json.dumps({**recipe, "sampling": {"top_k": 1}}))
    for model in (run, run / "checkpoint-6"):  # a checkpoint samples as its run's recipe says
        assert tunes(model, "--seed", "1") == tunes(model, "--seed", "2")
        assert printed[-1].endswith("sampled at temperature 1.2, top_k 1, top_p 0.8, min_p 0.0"), printed[-1]
    assert tunes(run, "--seed", "1", "--top_k", "8") != tunes(run, "--seed", "2", "--top_k", "8")
    code, _, stderr = evaluate_here(capsys, run, "--steps", "9", "--num_samples", "2", "--max_new_tokens", "24",
                                    "--constrain", "none", "--top_p", "0.9")
    assert code == 0, stderr[-2000:]
    sampling = json.loads((run / "eval" / "metrics.json").read_text())["settings"]["sampling"]
    assert (sampling["top_k"], sampling["top_p"], sampling["temperature"]) == (1, 0.9, 1.2)  # recipe, flag, default
    (run / "recipe.json").write_text(json.dumps({**recipe, "sampling": {"top_p": "high", "top-k": 3}}))
    code, _, stderr = run_cli([run, "--num_samples", "1"], capsys, "sample")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "unknown setting 'top-k'" in stderr and "top_p must be a number, not 'high'" in stderr and "recipe.json" in stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "has no checkpoints and no final model yet"),
        (["--top_p", "0", "--min_p", "1"], "top_p must be in (0, 1], not 0.0; min_p must be in [0, 1), not 1.0"),
        (["--max_repeats", "1"], "max_repeats must be 0 (off) or at least 2, not 1"),
        (["--checkpoints_dir", "x"], "command line: unrecognized arguments"),
    ],
    ids=["no-checkpoints", "bad-sampling", "bad-loop-limit", "unknown-flag"],
)
def test_bad_evaluation_input_gets_one_line(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps({"dataset_name_or_path": "music21"}))
    code, _, stderr = evaluate_here(capsys, run, *args)
    assert code == 2 and message in stderr, stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not (run / "eval").exists()


def test_a_folder_that_is_not_a_run_and_an_empty_split_are_refused(run_dir, tmp_path, capsys):
    code, _, stderr = evaluate_here(capsys, tmp_path)
    assert code == 2 and "is not a run directory" in stderr
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "optimizer.pt"))
    data = tmp_path / "tunes"
    data.mkdir()
    # Train and validation files only: this run's data has no test split.
    for split, tune in (("train", "M:2/4\nL:1/8\nK:D\nABcd|efga|\n"), ("validation", "M:2/4\nL:1/8\nK:D\ndcBA|efga|\n")):
        (data / f"{split}.jsonl").write_text(json.dumps({"text": tune}) + "\n")
    recipe = json.loads((copy / "recipe.json").read_text())
    (copy / "recipe.json").write_text(json.dumps({**recipe, "dataset_name_or_path": str(data), "max_train_samples": None}))
    code, _, stderr = evaluate_here(capsys, copy, "--split", "test")
    assert code == 2 and "has no test tunes" in stderr, stderr[-2000:]
    assert not (copy / "eval").exists()


def test_a_checkpoint_without_a_tokenizer_is_refused(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "optimizer.pt"))
    (copy / "checkpoint-6" / "tokenizer.json").unlink()
    (copy / "checkpoint-6" / "tokenizer_config.json").unlink()
    code, _, stderr = evaluate_here(capsys, copy)
    assert code == 2 and "checkpoint-6 has no tokenizer" in stderr
    assert not (copy / "eval").exists()  # refused before anything was written


def test_midi_is_written_for_a_real_tune_and_a_slow_one_is_given_up_with_the_reason(tmp_path):
    from finetune.generation import write_midi

    assert write_midi("X:1\nM:2/4\nL:1/8\nK:D\nABcd|efga|\n", tmp_path / "a.mid", writer="music21") is None
    assert (tmp_path / "a.mid").stat().st_size > 0
    long_tune = "X:1\nM:6/8\nL:1/8\nK:D\n" + "|:ABc def:|\n" * 300
    assert write_midi(long_tune, tmp_path / "b.mid", seconds=0.05, writer="music21").startswith("_TooSlow: gave up after 0.05 s")


@pytest.mark.skipif(shutil.which("abc2midi") is None, reason="abc2midi not installed (Debian: apt-get install abcmidi)")
def test_abc2midi_writes_the_midi_of_tunes_music21_cannot_expand(tmp_path):
    """A repeat opened and never closed, as a model writes it and abc2midi passes it: music21 gives up."""
    from finetune.generation import write_midi

    tune = "X:1\nM:4/4\nL:1/8\nK:G\nD2 | G2B2d2cB | A2A2G2z2 || |:B2d2g2e2 | d4z2 |]\n"
    assert write_midi(tune, tmp_path / "m.mid", writer="music21").startswith("ExpanderException")
    assert write_midi(tune, tmp_path / "a.mid") is None and (tmp_path / "a.mid").stat().st_size > 0
    assert write_midi("no tune at all", tmp_path / "a.mid").startswith("abc2midi wrote no MIDI")
    assert not (tmp_path / "a.mid").exists()  # the earlier file is gone, not passed off as this one's


def test_tunes_are_sampled_in_the_checkpoints_precision_after_a_bf16_evaluation(run_dir, corpus, tmp_path):
    """The bf16 token evaluation (what a GPU gets) leaves no autocast behind: afterwards the model's logits are
    those of the checkpoint loaded fresh, bit for bit, so evaluate_checkpoints.py samples what sample.py samples."""
    import datasets

    from finetune.args import DataArguments
    from finetune.evaluation.checkpoints import token_numbers
    from finetune.evaluation.token_metrics import TokenMetrics
    from finetune.model import load_checkpoint
    from finetune.packing import tokenize_and_pack

    model, tokenizer = load_checkpoint(str(run_dir / "checkpoint-9"))
    held_out = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": corpus["validation"][:8]})})
    packed, _ = tokenize_and_pack(held_out, tokenizer, 128, DataArguments(), splits=("validation",))
    numbers = token_numbers(model, packed["validation"], 4, TokenMetrics(tokenizer), str(tmp_path), bf16=True)
    assert 0 < numbers["eval_bits_per_char"] < 8
    prompt = tokenizer("X:1\nM:6/8\nL:1/8\nK:D\n", return_tensors="pt")["input_ids"]
    fresh, _ = load_checkpoint(str(run_dir / "checkpoint-9"))
    with torch.no_grad():
        assert torch.equal(model(prompt).logits, fresh(prompt).logits)


def test_steps_picks_checkpoints_and_an_unknown_step_is_refused(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    code, _, stderr = evaluate_here(capsys, copy, "--steps", "7")
    assert code == 2 and "no checkpoint at step 7; the steps there are [3, 6, 9]" in stderr
    assert not (copy / "eval").exists()
    code, _, stderr = evaluate_here(capsys, copy, "--steps", "6", "--num_samples", 2, "--max_new_tokens", 16, "--constrain", "none")
    assert code == 0, stderr[-2000:]
    rows = json.loads((copy / "eval" / "metrics.json").read_text())["rows"]
    assert [(row["step"], row["tunes"]) for row in rows] == [(6, "own")]
