"""evaluate_checkpoints.py and finetune.evaluation over a real run directory: every output, the report in a browser,
sample.py on the same run, one-line refusals."""

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_RECIPE, run_cli, run_finetune

pytestmark = pytest.mark.integration  # every test here trains a model or runs a command end to end


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
    # the musical measures: every row against the same real tunes, the real row (another split's tunes) the ceiling
    assert reference["overlapped_area"] > 0.6 and set(reference["music"]["distribution"]) >= {"pitch_class", "onset"}
    assert all(row["overlapped_area"] < reference["overlapped_area"] for row in own)  # 9 steps of a tiny model
    assert re.match(r"\d+ other validation tunes; .* those of 4 test tunes", report["settings"]["music_reference"])
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["tunes"]) for r in rows][-3:] == [("9", "own"), ("9", "constrained"), ("reference", "real")]
    assert (out / "metrics.md").read_text() in result.stdout and (out / "metrics.png").stat().st_size > 10_000
    assert (out / "music.png").stat().st_size > 10_000  # the last step's histograms over the real tunes'
    from huggingface_hub import ModelCard

    card = ModelCard.load(out.parent / "README.md")  # the run's card now reports its evaluation
    (result,) = card.data.eval_results[:1]
    assert result.metric_type == "bits_per_char" and result.metric_value == own[-1]["bits_per_char"]
    assert "## Evaluation" in card.text and "```abc\nM:" in card.text
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
    assert tunes(run, "--seed", "1", "--best_of", "2") == tunes(run, "--seed", "2")  # top_k 1: every candidate alike
    assert printed[-2].endswith("min_p 0.0, best of 2"), printed[-2]
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


def test_data_from_scores_a_run_on_another_recipes_tunes_in_a_folder_of_its_own(run_dir, tmp_path, capsys):
    """A base scored on the tune book it never saw: the other data's held-out tunes are the reference, the results
    go to eval-NAME/, and the run's own eval/ and model card are left as they were."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "optimizer.pt"))
    card = (copy / "README.md").read_text()
    book = tmp_path / "book"
    book.mkdir()
    tunes = {"train": "X:1\nT:Trained On\nM:2/4\nL:1/8\nK:D\nABcd|efga|\n",
             "validation": "X:2\nT:Held Out Reel\nM:4/4\nL:1/8\nK:G\nGABc dedB|cBAG FGAB|\n"}
    for split, tune in tunes.items():
        (book / f"{split}.jsonl").write_text(json.dumps({"text": tune}) + "\n")
    recipe = tmp_path / "my_book.json"
    recipe.write_text(json.dumps({"dataset_name_or_path": str(book), "max_train_samples": None, "max_eval_samples": None}))
    code, _, stderr = evaluate_here(capsys, copy, "--data_from", tmp_path / "nowhere.json")
    assert code == 2 and "nowhere.json: no such recipe file" in stderr and len(stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset_name_or_path": str(book), "sources": 5}))
    code, _, stderr = evaluate_here(capsys, copy, "--data_from", bad)
    assert code == 2 and "bad.json" in stderr and "sources" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    code, _, stderr = evaluate_here(capsys, copy, "--data_from", recipe, "--steps", "9", "--num_samples", 1,
                                    "--max_new_tokens", 16, "--constrain", "none")
    assert code == 0, stderr[-2000:]
    out = copy / "eval-my_book"
    report = json.loads((out / "metrics.json").read_text())
    assert [(row["step"], row["tunes"]) for row in report["rows"]] == [(9, "own")]
    reference = "".join(path.read_text() for path in (out / "samples" / "reference").glob("*.abc"))
    assert "GABc dedB|cBAG FGAB|" in reference and "ABcd|efga|" not in reference  # that book's held-out tune
    assert not (copy / "eval").exists()
    assert (copy / "README.md").read_text() == card
