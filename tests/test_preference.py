"""prefer.py and finetune.preference: DPO of a real (tiny) run on its own tunes, its pairs, its refusals."""

import json
import random
import shutil

import pytest
import torch
from conftest import REPO, TINY_RECIPE, run_cli, run_finetune
from safetensors.torch import load_file
from test_fuzz import mutate_recipe

from finetune.abc.measures import Typicality
from finetune.abc.text import header_length
from finetune.errors import UserError
from finetune.generation import Sample, rerank_key
from finetune.preference import parse_preference_recipe, preference_pairs

RECIPE = REPO / "recipes" / "preference" / "music_abc_cpu.json"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefer") / "run"
    run_finetune(TINY_RECIPE, "--max_steps", 3, "--save_steps", 3, "--bf16", "false", "--optim", "adamw_torch",
                 "--output_dir", out)
    return out


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.integration
def test_prefer_writes_a_run_that_evaluation_reads_with_the_tuned_model_after_the_run(tiny_run, tmp_path, capsys):
    """One round: the run's model again as its first checkpoint, the tuned one after it (and at the top), the pairs
    it trained on, the run's recipe; the tuned weights differ from the run's; evaluate_checkpoints.py reads it."""
    out = tmp_path / "dpo"
    code, printed, err = run_cli([RECIPE, "--run", tiny_run, "--output_dir", out, "--rounds", 1, "--prompts", 6,
                                  "--candidates", 2, "--per_device_train_batch_size", 2, "--num_train_epochs", 1,
                                  "--bf16", "false", "--learning_rate", "1e-3"], capsys, "prefer")
    assert code == 0, err[-2000:]
    pairs = [json.loads(line) for line in (out / "round-1" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and f"round 1: {len(pairs)} pairs from 6 prompts x 2 candidates" in printed
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps == [3, 3 + (len(pairs) + 1) // 2]  # the run's step, then one preference step per batch of pairs
    assert json.loads((out / "recipe.json").read_text()) == json.loads((tiny_run / "recipe.json").read_text())
    assert json.loads((out / "preference.json").read_text())["run_step"] == 3
    before, after = weights(out / "checkpoint-3"), weights(out / f"checkpoint-{steps[1]}")
    run = weights(tiny_run)
    assert all(torch.equal(before[k], run[k]) for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(after[k], v) for k, v in weights(out).items())
    code, _, err = run_cli([out, "--num_samples", 2, "--max_new_tokens", 24], capsys, "evaluate_checkpoints")
    assert code == 0, err[-2000:]
    rows = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    assert sorted({row["step"] for row in rows}) == steps


def written_twice(tune: str) -> str:
    """The tune with its body written out again after it (a final bar line in the middle made a plain one)."""
    head, body = tune[:header_length(tune)], tune[header_length(tune):].rstrip("\n")
    return head + (body[:-2] + "|" if body.endswith("|]") else body) + "\n" + body + "\n"


def test_pairs_choose_the_tune_and_reject_its_loop_and_skip_prompts_that_rank_alike(corpus):
    """Of a real tune and the same header over one bar looped, the tune is chosen (a fault a listener hears); of a
    tune and the same tune written out twice, both whole, valid and unflagged, the tune (form); a prompt whose
    candidates are the same tune gives no pair."""
    typical = Typicality(corpus["train"], with_form=True)

    def sample(text):
        return Sample(prompt=text[:header_length(text)], text=text, ended=True, new_tokens=0)

    clean = [t for t in random.Random(1).sample(corpus["test"], 60)
             if rerank_key(sample(t))[:4] == rerank_key(sample(written_twice(t)))[:4] == (True, True, True, 0)]
    tune, other = clean[0], clean[1]
    head = header_length(tune)
    looped = tune[:head] + (tune[head:].split("|")[1] + "|") * 16 + "\n"
    candidates = [looped, tune, other, written_twice(other), tune, tune]
    pairs = preference_pairs([sample(t) for t in candidates], 2, typical)
    assert [(p["prompt"] + p["chosen"], p["prompt"] + p["rejected"]) for p in pairs] == [
        (tune, looped), (other, written_twice(other))]


@pytest.mark.parametrize("flags, expected", [
    (["--rounds", "0"], "'rounds' must be at least 1, got 0"),
    (["--candidates", "1"], "'candidates' must be at least 2"),
    (["--run", "runs/nowhere"], "'run': runs/nowhere is not a finished run"),
    (["--run", ""], "'run' is not set"),
    (["--learning_rate", "0"], "'learning_rate' must be positive"),
    (["--roundz", "2"], "unknown flag '--roundz'; did you mean 'rounds'?"),
    (["--output_dir", str(REPO / "tests")], "already holds files"),
])
def test_prefer_refuses_bad_recipes_in_one_line_and_writes_nothing(tiny_run, tmp_path, capsys, flags, expected):
    out = tmp_path / "never"
    argv = [RECIPE, "--run", tiny_run, "--output_dir", out, *flags]
    code, _, err = run_cli(argv, capsys, "prefer")
    assert code == 2 and expected in err, err
    assert not out.exists()


def test_mutated_preference_recipes_parse_or_say_why(tiny_run, tmp_path):
    """300 mutated preference recipes (values of every JSON type swapped in, keys dropped or invented, bytes
    edited): each parses, or raises one UserError that names the problem."""
    rng = random.Random(5)
    source = json.loads(RECIPE.read_text())
    outcomes = {"parsed": 0, "refused": 0}
    for n in range(300):
        recipe = {**source, "run": str(tiny_run), "output_dir": str(tmp_path / f"out{n}")}
        text = mutate_recipe(recipe, rng, ["round", "", "x" * 300])
        path = tmp_path / f"r{n}.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            parse_preference_recipe([str(path)])
            outcomes["parsed"] += 1
        except UserError as e:
            assert str(e).strip(), text
            outcomes["refused"] += 1
        shutil.rmtree(tmp_path / f"out{n}", ignore_errors=True)
    print(outcomes)
    assert outcomes["refused"] > 100 and outcomes["parsed"] > 20
