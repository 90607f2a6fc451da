"""Recipes: every shipped recipe validates, `extends` and flags resolve, bad recipes fail cleanly."""

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, TINY_RECIPE, run_cli

from finetune.errors import UserError
from finetune.recipe import parse_recipe, read_recipe

RECIPES = sorted((REPO / "recipes").glob("*.json"))
CPU_RECIPE = REPO / "recipes" / "music_abc_cpu.json"

DOCUMENTED = {
    "seed": 3407,
    "learning_rate": 1e-4,
    "warmup_steps": 2000,
    "lr_scheduler_type": "linear",
    "gradient_accumulation_steps": 32,
    "weight_decay": 0.01,
    "optim": "adamw_8bit",
    "bf16": True,
    "fp16": False,
    "logging_steps": 2000,
    "logging_strategy": "steps",
    "eval_strategy": "steps",
    "save_strategy": "steps",
}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    """Each recipe in recipes/ resolves its extends chain and builds all four argument objects."""
    parsed = parse_recipe([str(path)])
    assert parsed.training_args.output_dir.startswith("runs/")
    assert parsed.model_args.model_config.get("model_type") or parsed.model_args.model_name_or_path


def test_music_abc_carries_the_documented_values():
    """recipes/music_abc.json holds the source document's hyperparameters verbatim."""
    recipe = read_recipe(REPO / "recipes" / "music_abc.json")
    assert {key: recipe[key] for key in DOCUMENTED} == DOCUMENTED
    assert recipe["num_train_epochs"] in (1, 2)
    assert "max_seq_length" not in recipe  # defaults to the model's context length
    args = parse_recipe([str(REPO / "recipes" / "music_abc.json")]).training_args
    assert (args.optim.value, args.lr_scheduler_type.value, args.seed) == ("adamw_8bit", "linear", 3407)


def test_extends_merges_nested_model_config_and_flags_win():
    """A variant names only what differs; nested model_config merges by key; a flag beats the file."""
    parsed = parse_recipe([str(TINY_RECIPE), "--learning_rate", "3e-4", "--model_config", '{"hidden_size": 64}'])
    assert parsed.training_args.learning_rate == 3e-4
    assert parsed.training_args.seed == 3407  # from music_abc.json, two files up the chain
    assert parsed.model_args.model_config["model_type"] == "llama"
    assert parsed.model_args.model_config["hidden_size"] == 64
    assert parsed.resolved["learning_rate"] == 3e-4 and "extends" not in parsed.resolved


def test_sampling_merges_key_by_key_is_checked_and_changing_it_resumes_the_run(tmp_path, capsys):
    """`sampling` merges like model_config (a flag names one setting), every bad setting is named at once, a run
    resumed with other sampling settings is the same experiment, and the plan says how the run will be sampled."""
    from finetune.run_dir import recipe_changes

    code, stdout, _ = run_cli([CPU_RECIPE, "--dry_run"], capsys)
    assert code == 0 and "sampling         temperature 1.0, top_k 8, top_p 0.8, min_p 0.0 (how" in stdout

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"extends": str(TINY_RECIPE), "sampling": {"temperature": 1.0, "top_p": 0.9}}))
    parsed = parse_recipe([str(recipe), "--sampling", '{"top_p": 0.7}'])
    assert parsed.model_args.sampling == parsed.resolved["sampling"] == {"temperature": 1.0, "top_p": 0.7}
    assert recipe_changes(parsed.resolved, {**parsed.resolved, "sampling": {}}) == []
    assert recipe_changes(parsed.resolved, {**parsed.resolved, "seed": 1}) == ["seed"]
    with pytest.raises(UserError) as err:
        parse_recipe([str(recipe), "--sampling", '{"top_p": 2, "top_k": -1, "temprature": 1}'])
    assert str(err.value).count("\n") == 0 and "'sampling': unknown setting 'temprature'" in str(err.value)
    assert "top_k must be 0 (off) or more, not -1" in str(err.value) and "top_p must be in (0, 1], not 2" in str(err.value)


def test_extends_cycle_is_reported(tmp_path):
    (tmp_path / "a.json").write_text('{"extends": "b.json"}')
    (tmp_path / "b.json").write_text('{"extends": "a.json"}')
    with pytest.raises(UserError, match=r"'extends' cycle \(a.json -> b.json -> a.json\)"):
        read_recipe(tmp_path / "a.json")


def test_all_problems_are_reported_together(tmp_path):
    """Three mistakes in one recipe come back in one message, not one per attempt."""
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"extends": str(REPO / "recipes/music_abc.json"), "learning_rat": 1, "seed": "x", "fp16": True}))
    with pytest.raises(UserError) as err:
        parse_recipe([str(recipe)])
    assert "did you mean 'learning_rate'" in str(err.value) and "'seed': got \"x\", expected an integer" in str(err.value)
    recipe.write_text(json.dumps({"extends": str(REPO / "recipes/music_abc.json"), "fp16": True, "learning_rate": -1}))
    with pytest.raises(UserError, match="2 problems") as err:
        parse_recipe([str(recipe)])
    assert "'bf16' and 'fp16' are both true" in str(err.value)


BASE = str(REPO / "recipes" / "music_abc.json")
BAD_RECIPES = {
    "unknown key": ({"extends": BASE, "learning_rat": 1e-4}, "unknown key 'learning_rat'; did you mean 'learning_rate'?"),
    "wrong type": ({"extends": BASE, "learning_rate": "fast"}, "'learning_rate': got \"fast\", expected a number"),
    "bool as string": ({"extends": BASE, "use_peft": "yes"}, "'use_peft': got \"yes\", expected true or false"),
    "bf16 string": ({"extends": BASE, "bf16": "yes"}, "'bf16': got \"yes\", expected true, false or \"auto\""),
    "bf16 auto and fp16": ({"extends": BASE, "bf16": "auto", "fp16": True}, "'bf16' \"auto\" with 'fp16' true; keep one"),
    "float batch": ({"extends": BASE, "per_device_train_batch_size": 2.5}, "expected an integer"),
    "bad choice": ({"extends": BASE, "lr_scheduler_type": "linearr"}, "did you mean \"linear\"?"),
    "bad optimizer": ({"extends": BASE, "optim": "adamw_9bit"}, "did you mean \"adamw_8bit\"?"),
    "bf16 and fp16": ({"extends": BASE, "fp16": True}, "'bf16' and 'fp16' are both true"),
    "zero batch": ({"extends": BASE, "per_device_train_batch_size": 0}, "must be at least 1"),
    "negative lr": ({"extends": BASE, "learning_rate": -1e-4}, "'learning_rate' must be positive"),
    "missing data": ({"extends": BASE, "dataset_name_or_path": "./no/such/tunes.abc"}, "no such file or folder"),
    "missing extends": ({"extends": "nowhere.json"}, "no such recipe file"),
    "non-object json": ([1, 2, 3], "a recipe is a JSON object"),
    "no model": ({"extends": BASE, "model_config": {"model_type": None}}, "no model"),
    "tiny seq": ({"extends": BASE, "max_seq_length": 1}, "'max_seq_length' must be at least 2"),
    "seq over context": ({"extends": BASE, "max_seq_length": 4096}, "longer than the model's context (1024)"),
    "negative warmup": ({"extends": BASE, "warmup_steps": -5}, "'warmup_steps' must not be negative"),
    "zero accumulation": ({"extends": BASE, "gradient_accumulation_steps": 0}, "'gradient_accumulation_steps' must be at least 1"),
    "negative decay": ({"extends": BASE, "weight_decay": -0.1}, "'weight_decay' must not be negative"),
    "zero epochs": ({"extends": BASE, "num_train_epochs": 0}, "'num_train_epochs' must be positive"),
    "streaming without max_steps": ({"extends": BASE, "streaming": True}, "'streaming' reads a corpus of unknown length"),
    "transpose by 0": ({"extends": BASE, "transpose_train": [2, 0]}, "'transpose_train' takes distinct shifts"),
    "negative balance": ({"extends": BASE, "balance_meters": -5}, "'balance_meters' must be 0 (no copies) or a number of tunes"),
    "balance while streaming": ({"extends": BASE, "balance_meters": 100, "streaming": True, "max_steps": 5},
                                "'balance_meters' counts the tunes of each meter over the whole training split"),
    "negative merges": ({"extends": BASE, "tokenizer_merges": -1}, "'tokenizer_merges' must be 0 (character level) or more"),
    "merges while streaming": ({"extends": BASE, "tokenizer_merges": 64, "streaming": True, "max_steps": 5},
                                 "'tokenizer_merges' learns a new tokenizer from the whole training split, which 'streaming' rules out"),
    "zero logging steps": ({"extends": BASE, "logging_steps": 0}, "'logging_steps' must be positive"),
    "huge batch": ({"extends": BASE, "per_device_train_batch_size": 10**30}, "expected an integer below 2**31"),
    "infinite lr": ({"extends": BASE, "learning_rate": 1e999}, "expected a finite number"),
    "validation share": ({"extends": BASE, "validation_split_percentage": 60}, "must be in [0, 50)"),
    "extends not a path": ({"extends": 5}, "'extends' must be a path string"),
    "report_to object": ({"extends": BASE, "report_to": {"tensorboard": True}}, "'report_to': got"),
    "model_config string": ({"extends": BASE, "model_config": "llama"}, "'model_config': got \"llama\", expected a JSON object"),
    "unknown model type": ({"extends": BASE, "model_config": {"model_type": "lama"}}, "'model_config':"),
    "strategy typo": ({"extends": BASE, "eval_strategy": "stepz"}, "did you mean \"steps\"?"),
    "null seed": ({"extends": BASE, "seed": None}, "'seed': got null, expected an integer"),
    "overlong typo": ({"extends": BASE, "overlong_tunes": "cut"}, "'overlong_tunes': got \"cut\", expected one of"),
    "text column number": ({"extends": BASE, "text_column": 5}, "'text_column': got 5, expected a string"),
    "missing model dir": ({"extends": BASE, "model_name_or_path": "./no/such/model"}, "'model_name_or_path': no such folder"),
    "missing tokenizer dir": ({"extends": BASE, "tokenizer_name_or_path": "/no/such/tok"}, "'tokenizer_name_or_path': no such folder"),
    "4bit without lora": ({"extends": BASE, "load_in_4bit": True}, "'load_in_4bit' needs 'use_peft'"),
    "merge without lora": ({"extends": BASE, "merge_adapter": True}, "'merge_adapter' needs 'use_peft'"),
    "lora without base": ({"extends": BASE, "use_peft": True}, "'use_peft' adapts a pretrained model"),
    "train_on typo": ({"extends": BASE, "train_on": "tune"}, "'train_on': got \"tune\", expected one of"),
    "flex on cpu": ({"extends": BASE, "attn_implementation": "flex_attention"}, "no backward pass on the CPU"),
    "flash without cuda": ({"extends": BASE, "attn_implementation": "flash_attention_2"}, "needs a CUDA GPU"),
}


@pytest.mark.parametrize("case", BAD_RECIPES, ids=str)
def test_bad_recipe_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    recipe, expected = BAD_RECIPES[case]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recipe))
    out_dir = tmp_path / "out"
    code, stdout, stderr = run_cli([path, "--output_dir", out_dir], capsys)
    assert code == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr
    assert "Traceback" not in stderr + stdout
    assert not out_dir.exists()


def test_a_recipe_that_names_no_output_dir_is_told_to(tmp_path, capsys):
    recipe = json.loads((REPO / "recipes" / "music_abc.json").read_text())
    del recipe["output_dir"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(recipe))
    code, _, stderr = run_cli([path, "--dry_run"], capsys)
    assert code == 2 and "'output_dir' is not set; name the folder the run writes to" in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "text, expected",
    [("", "empty file"), ('{"seed": 1,}', "invalid JSON"), (b"\xff\xfe{}", "not UTF-8")],
    ids=["empty", "trailing comma", "not utf-8"],
)
def test_unreadable_recipe_files(text, expected, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, stderr = run_cli([path], capsys)
    assert code == 2 and expected in stderr and stderr.count("\n") == 1
    if expected == "invalid JSON":
        assert f"{path.resolve()}:1:12:" in stderr  # line and column of the stray comma


def test_bad_flags(capsys):
    code, _, stderr = run_cli([TINY_RECIPE, "--learning_rat", "1"], capsys)
    assert code == 2 and "did you mean 'learning_rate'" in stderr
    code, _, stderr = run_cli([TINY_RECIPE, "--learning_rate", "fast"], capsys)
    assert code == 2 and "invalid" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli(["--dry_run"], capsys)
    assert code == 2 and "usage" in stderr


def test_dry_run_prints_plan_with_warmup_warning(tmp_path, capsys):
    """The documented recipe trains for fewer steps than its 2000 warmup steps: the plan says so."""
    out_dir = tmp_path / "out"
    code, stdout, _ = run_cli([BASE, "--dry_run", "--output_dir", out_dir], capsys)
    assert code == 0
    assert "warmup_steps 2000 >=" in stdout and "never reaches its peak" in stdout
    for expected in ("adamw_8bit", "weight_decay 0.01", "seed 3407", "linear to peak 0.0001", "rows of 1024 tokens"):
        assert expected in stdout
    assert not out_dir.exists()


def test_the_100m_recipe_is_the_documented_setup_at_100m_parameters(capsys):
    """llm_100m_cosine: AdamW 6e-4, cosine after 100 warmup steps, clipping 1.0, and ~100M parameters."""
    path = REPO / "recipes" / "llm_100m_cosine.json"
    args = parse_recipe([str(path)]).training_args
    assert (args.optim.value, args.learning_rate, args.lr_scheduler_type.value) == ("adamw_torch", 6e-4, "cosine")
    assert (args.warmup_steps, args.max_grad_norm, args.eval_strategy.value) == (100, 1.0, "steps")
    code, stdout, _ = run_cli([path, "--dry_run"], capsys)
    parameters = float(re.search(r"new llama from model_config: ([\d.]+)M parameters", stdout).group(1))
    assert code == 0 and 90 <= parameters <= 110


def test_8bit_adamw_is_probed_before_training(monkeypatch):
    """adamw_8bit where bitsandbytes cannot step is a validation error, not a crash mid-run."""
    import bitsandbytes

    from finetune import recipe

    def broken(*args, **kwargs):
        raise RuntimeError("no kernels for this device")

    assert recipe._bitsandbytes_problem({"use_cpu": True}) is None  # it really steps on this machine
    monkeypatch.setattr(bitsandbytes.optim, "AdamW8bit", broken)
    with pytest.raises(UserError, match=r"'optim' adamw_8bit cannot run here \(RuntimeError: no kernels"):
        parse_recipe([str(REPO / "recipes" / "music_abc.json")])


@pytest.mark.parametrize("native", [True, False], ids=["avx512-bf16", "avx2"])
def test_bf16_auto_is_bf16_where_the_cpu_has_it(native, monkeypatch, capsys):
    """`"bf16": "auto"` trains in bf16 on a CPU with native bf16 and in fp32 on one that would emulate it; the
    run's recipe keeps "auto", so it resolves again wherever it is run. Both kinds are forced here, and the
    machine's own answer is checked against the CPU's flags."""
    from finetune import recipe

    if Path("/proc/cpuinfo").exists():
        flags = set(Path("/proc/cpuinfo").read_text().split())
        assert recipe.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(recipe, "cpu_has_native_bf16", lambda: native)
    for argv in ([str(CPU_RECIPE)], [str(TINY_RECIPE), "--bf16", "auto"]):  # from the file, from a flag
        parsed = parse_recipe(argv)
        assert parsed.training_args.bf16 is native and parsed.resolved["bf16"] == "auto"
        assert f'bf16 "auto": {"bf16" if native else "fp32"}' in " ".join(parsed.notes)
    code, stdout, _ = run_cli([CPU_RECIPE, "--dry_run"], capsys)
    assert code == 0 and f"precision        {'bf16' if native else 'fp32'} on cpu" in stdout
    assert parse_recipe([str(CPU_RECIPE), "--bf16", "false"]).training_args.bf16 is False  # a plain value stays
    code, _, stderr = run_cli([CPU_RECIPE, "--bf16", "sometimes"], capsys)
    assert code == 2 and "expected true, false or \"auto\"" in stderr and stderr.count("\n") == 1


def test_every_recipe_says_what_it_is_and_the_readme_table_is_made_from_them():
    """Each shipped recipe has its own description, and README.md's table of recipes is `recipe_table`'s output."""
    from finetune.recipe import recipe_table

    for path in RECIPES:
        own = json.loads(path.read_text())
        assert len(own.get("description", "")) > 20, f"{path.name} has no description of its own"
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- recipe-table:")[1].split("\n", 1)[1].split("<!-- recipe-table end -->")[0]
    assert block == recipe_table(REPO / "recipes"), "regenerate with `python -m finetune.recipe --table`"


def undone_keys(path: Path) -> list[str]:
    """Keys that a variant sets back to what its parent's own parent had (absent counts as 0, false, null or [])."""
    own = json.loads(path.read_text())
    if "extends" not in own:
        return []
    parent_path = path.parent / own["extends"]
    parent = json.loads(parent_path.read_text())
    if "extends" not in parent:  # a change to the documented recipe is what a variant is for
        return []
    grandparent = read_recipe(parent_path.parent / parent["extends"])
    undone = []
    for key, value in own.items():
        if key in parent and key not in ("extends", "description", "output_dir"):
            before = grandparent.get(key)
            if value == before or (key not in grandparent and value in (0, False, None, [])):
                undone.append(key)
    return undone


def test_no_variant_undoes_what_it_inherits(tmp_path):
    """No shipped recipe sets a key back to what its parent changed; the check catches one that does."""
    assert {path.name: undone_keys(path) for path in RECIPES if undone_keys(path)} == {}
    undoing = tmp_path / "undoing.json"
    (tmp_path / "cpu.json").write_text(json.dumps({"extends": str(REPO / "recipes" / "music_abc.json"), "loop_penalty": 0.1, "bf16": "auto"}))
    undoing.write_text(json.dumps({"extends": "cpu.json", "loop_penalty": 0, "bf16": True}))
    assert undone_keys(undoing) == ["loop_penalty", "bf16"]
