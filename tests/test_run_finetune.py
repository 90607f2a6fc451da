"""The real entry point on CPU with a tiny model: train, save, load with plain transformers, resume."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RECIPE, run_cli, run_finetune
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = pytest.mark.integration  # every test here trains a model or runs a command end to end

ACCEPTANCE_FLAGS = [
    "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "2",
    "--save_steps", "2", "--eval_steps", "2", "--logging_steps", "1",
]


def finetune(*args, **kwargs):
    return run_finetune(TINY_RECIPE, *args, **kwargs)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "D"
    result = finetune("--max_steps", 3, *ACCEPTANCE_FLAGS, "--output_dir", out)
    return out, result


def test_three_steps_with_8bit_adamw_and_bf16_leave_a_complete_run_dir(first_run):
    out, result = first_run
    assert "3 optimizer steps in all" in result.stdout and "adamw_8bit" in result.stdout and "bf16" in result.stdout
    for name in ("checkpoint-2", "checkpoint-3", "model.safetensors", "tokenizer.json", "recipe.json", "environment.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoint-2" / "optimizer.pt").exists()
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["max_steps"] == 3 and recipe["optim"] == "adamw_8bit" and recipe["seed"] == 3407
    env = json.loads((out / "environment.json").read_text())
    assert env["packages"]["transformers"] and env["command"][0] == "run_finetune.py"
    state = json.loads((out / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert evals and all(0 <= entry["eval_accuracy"] <= 1 for entry in evals)
    # Character tokens: bits per char is about the loss in bits. Not exactly: end-of-tune tokens spell no
    # character, and eval_loss averages batch means where bits per char sums over tokens.
    assert all(0.95 < entry["eval_bits_per_char"] / (entry["eval_loss"] / math.log(2)) < 1.05 for entry in evals)


def test_a_run_writes_a_model_card_the_hub_reads(first_run):
    """output_dir/README.md: Trainer's draft, read back by huggingface_hub, naming what was trained and how."""
    from huggingface_hub import ModelCard

    out, _ = first_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "abc-notation" in card.data.tags
    assert card.data.base_model is None and "trained from scratch on the music21 dataset" in card.text
    assert "More information needed" not in card.text.split("## Training procedure")[0]
    assert f"python sample.py {out}" in card.text and "recipe.json" in card.text


def test_output_loads_with_plain_transformers_and_generates_abc(first_run):
    out, _ = first_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    # Trained through sdpa_packed, saved with no attention named: plain loading picks stock SDPA.
    assert "attn_implementation" not in (out / "config.json").read_text()
    assert model.config._attn_implementation == "sdpa"
    prompt = "M:6/8\nK:D\n"
    inputs = tokenizer(prompt, return_tensors="pt")
    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=20, do_sample=True)
    text = tokenizer.decode(output[0], skip_special_tokens=True)
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_rerun_resumes_from_the_last_checkpoint_and_refuses_another_recipe(first_run, capsys):
    out, _ = first_run
    result = finetune("--max_steps", 5, *ACCEPTANCE_FLAGS, "--output_dir", out)
    assert f"Resuming from {out}/checkpoint-3" in result.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    # Steps 1-3 come from the first run and are not trained again.
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5]
    code, _, stderr = run_cli([TINY_RECIPE, "--learning_rate", "3e-4", "--output_dir", out], capsys)
    assert code == 2 and "different recipe (differs in: learning_rate)" in stderr and "Traceback" not in stderr


def test_accelerate_launch_without_a_config_and_the_plan_matches_the_trainer(tmp_path):
    """`accelerate launch` works with no accelerate config; the plan's step count is the Trainer's."""
    out = tmp_path / "D"
    result = finetune(
        "--num_train_epochs", 1, "--gradient_accumulation_steps", 3, "--max_train_samples", 40,
        "--bf16", "false", "--output_dir", out,
        launcher=(str(Path(sys.executable).with_name("accelerate")), "launch"),
        env={"HF_HOME": str(tmp_path / "hf_home")},  # where accelerate would look for a default config
    )
    planned = int(re.search(r"(\d+) optimizer steps in all", result.stdout).group(1))
    state = json.loads((out / "trainer_state.json").read_text())
    assert planned == state["max_steps"] == state["global_step"]


def test_a_checkpoint_cut_off_mid_save_is_skipped(tmp_path):
    """Trainer writes trainer_state.json last; a checkpoint without it is not resumed from."""
    from finetune.run_dir import last_checkpoint

    assert last_checkpoint(str(tmp_path / "missing")) is None
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")


def test_two_process_ddp_on_cpu_matches_one_process_with_the_same_global_batch(tmp_path):
    """DDP over gloo: 2 processes x 2 rows log the same training losses as 1 process x 4 rows.

    Tolerance: 1e-4 on the training loss (same rows, same order, token-weighted across processes).
    Evaluation is looser (1e-2): distributed eval pads its last batch by repeating rows.
    """
    common = ["--max_steps", 3, "--bf16", "false", "--optim", "adamw_torch", "--logging_steps", 1,
              "--eval_steps", 100, "--save_steps", 2, "--max_train_samples", 64, "--warmup_steps", 0]
    finetune(*common, "--per_device_train_batch_size", 4, "--output_dir", tmp_path / "one")
    # `--multi_gpu` is accelerate's torch.distributed launcher; without a GPU the runner sets use_cpu and
    # accelerate forms a gloo group. (`--cpu --num_processes 2` would start a single process.)
    result = finetune(
        *common, "--per_device_train_batch_size", 2, "--output_dir", tmp_path / "two",
        launcher=(str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2"),
    )
    assert result.stdout.count("Run plan") == 1 and "x 2 process(es) = 4 rows" in result.stdout
    logs = {}
    for name in ("one", "two"):
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        logs[name] = {
            "train": [entry["loss"] for entry in history if "loss" in entry],
            "eval": [entry["eval_loss"] for entry in history if "eval_loss" in entry],
        }
    assert len(logs["two"]["train"]) == 3
    assert logs["two"]["train"] == pytest.approx(logs["one"]["train"], abs=1e-4)
    assert logs["two"]["eval"] == pytest.approx(logs["one"]["eval"], abs=1e-2)
    # The main process saved each checkpoint once, with the run files beside it.
    assert sorted(p.name for p in (tmp_path / "two").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "two" / "recipe.json").exists()


def test_gradient_accumulation_gives_the_loss_of_the_whole_batch(tmp_path):
    """2 micro-batches of 2 rows log the same losses as 4 rows at once: the loss is normalised by the
    tokens of the whole accumulated batch (Trainer's num_items_in_batch), not averaged per micro-batch."""
    common = ["--max_steps", 3, "--bf16", "false", "--optim", "adamw_torch", "--logging_steps", 1,
              "--eval_steps", 100, "--save_steps", 100, "--max_train_samples", 64, "--warmup_steps", 0]
    finetune(*common, "--per_device_train_batch_size", 4, "--gradient_accumulation_steps", 1, "--output_dir", tmp_path / "a")
    finetune(*common, "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", 2, "--output_dir", tmp_path / "b")
    losses = [
        [e["loss"] for e in json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"] if "loss" in e]
        for name in ("a", "b")
    ]
    assert len(losses[0]) == 3 and losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_learned_merges_train_resume_and_a_changed_corpus_is_refused(tmp_path, capsys):
    """`tokenizer_merges`: the run's tokenizer (characters + merges learnt from its training tunes) is saved with the
    model, whose embeddings match it, and sampling through the constraint reads it. Re-running resumes, since the
    same tunes give the same merges; resuming over other training tunes (other merges, other ids) is refused."""
    from finetune.generation import SampleArguments, generate_tunes
    from finetune.model import load_checkpoint

    out = tmp_path / "merges"
    flags = ["--tokenizer_merges", 64, *ACCEPTANCE_FLAGS, "--output_dir", out]
    first = finetune("--max_steps", 2, *flags)
    model, tokenizer = load_checkpoint(str(out))
    assert f"tokenizer: {len(tokenizer)} tokens, ABC characters + merges learned from the train tunes" in first.stdout
    assert 431 + 50 < len(tokenizer) == model.get_input_embeddings().weight.shape[0] <= 431 + 64
    tunes = generate_tunes(model, tokenizer, ["M:6/8\nL:1/8\nK:D\n"] * 2, SampleArguments(num_samples=2, max_new_tokens=40))
    assert all(tune.text.startswith("M:6/8\nL:1/8\nK:D\n") and tune.new_tokens > 0 for tune in tunes)
    resumed = finetune("--max_steps", 3, *flags)
    assert f"Resuming from {out}/checkpoint-2" in resumed.stdout
    code, _, stderr = run_cli(
        [TINY_RECIPE, "--max_steps", 4, *flags, "--max_train_samples", 32, "--allow_recipe_change"], capsys
    )
    assert code == 2 and "Traceback" not in stderr
    assert "was trained with another tokenizer than this run builds" in stderr
