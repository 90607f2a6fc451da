"""Preference tuning of a trained run on its own tunes with TRL's DPOTrainer, round after round: prefer.py's work.

As NotaGen does with its CLaMP-DPO (Wang et al., 2025) and iterative DPO does with text, the model learns from its
own tunes, judged by a score; here the score is the project's own. Each round:

1. the model samples `candidates` tunes for each of `prompts` headers of training tunes (its own tunes: no
   constraint and no loop limit, at the run's sampling settings; a fresh draw of prompts and seed each round);
2. each prompt's candidates are ranked as best of n ranks them (generation.rerank_key: ended, a whole tune, passed by
   the checker, the fewest faults a listener hears), then by how near they lie to the training tunes in pitch,
   interval, length, range and onset *and in how much they repeat themselves* (Typicality with_form: form is what a
   filter cannot give and a model must learn);
3. the first is chosen and the last rejected (a prompt whose candidates all rank alike gives no pair), and
   DPOTrainer trains the model on the pairs against a frozen copy of itself as the round found it (TRL's reference),
   with the recipe's DPOConfig.

The output_dir is a run folder that evaluate_checkpoints.py and sample.py read as they read run_finetune.py's: the
run's recipe.json (its data and sampling), its final model again as checkpoint-STEP, then each round's model as
checkpoint-(STEP + the preference steps so far), the last also at the top; PREFERENCE_FILE holds the preference
recipe, and round-N/pairs.jsonl the pairs each round trained on.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from datasets import Dataset
from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from trl import DPOConfig, DPOTrainer

from .abc.measures import Typicality
from .errors import UserError
from .evaluation.checkpoints import recipe_data_args, training_tunes
from .generation import Sample, SampleArguments, generate_tunes, prompt_fields, prompt_from_tune, rerank_key
from .model import context_length, is_model_dir, load_checkpoint
from .recipe import RecipeParser, parse_with, writable_problem
from .run_dir import RECIPE_FILE, global_step, saved_recipe

PREFERENCE_FILE = "preference.json"


@dataclass
class PreferenceArguments:
    description: str = field(default="", metadata={"help": "What the recipe is for, on what hardware, in about how long."})
    run: str = field(
        default="", metadata={"help": "The trained run to tune: a run_finetune.py output_dir (its final model and data)."}
    )
    rounds: int = field(
        default=2, metadata={"help": "Rounds of sampling, ranking and DPO; each samples from the model the last one left."}
    )
    prompts: int = field(
        default=512, metadata={"help": "Training tunes whose headers prompt each round's candidates (drawn afresh each round)."}
    )
    candidates: int = field(default=4, metadata={"help": "Own tunes sampled per prompt: the best and the worst make a pair."})


def _problems(ns: dict) -> list[str]:
    """The preference recipe's values: each a problem with its fix."""
    problems = []
    run = ns["run"]
    if not run:
        problems.append("'run' is not set; name the trained run to tune, e.g. \"run\": \"runs/music_abc_cpu\"")
    else:
        try:
            finished = saved_recipe(run) is not None and is_model_dir(Path(run))
        except UserError as e:
            problems.append(f"'run': {e}")
        else:
            if not finished:
                problems.append(f"'run': {run} is not a finished run (a recipe.json and a final model); "
                                "train it with run_finetune.py first")
    for key, least in (("rounds", 1), ("prompts", 1), ("candidates", 2), ("per_device_train_batch_size", 1)):
        if ns[key] < least:
            problems.append(f"'{key}' must be at least {least}, got {ns[key]}")
    if not ns["learning_rate"] > 0:
        problems.append(f"'learning_rate' must be positive, got {ns['learning_rate']}")
    out = ns["output_dir"]
    if problem := writable_problem(out):
        problems.append(problem)
    elif Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):  # the run itself, too
        problems.append(f"'output_dir': {out} already holds files; name a new folder (a preference run starts afresh)")
    return problems


def parse_preference_recipe(argv: list[str]) -> tuple[PreferenceArguments, DPOConfig, dict, list[str]]:
    """`RECIPE.json [--field value ...]`: PreferenceArguments and DPOConfig fields, read as run_finetune.py reads
    its recipes (`extends`, flags win, every problem at once), or UserError."""
    parser = RecipeParser((PreferenceArguments, DPOConfig), prog="prefer.py", usage="prefer.py RECIPE.json [--field value ...]")
    (preference, dpo), resolved, notes = parse_with(parser, argv, _problems, "recipes/preference/music_abc_cpu.json")
    return preference, dpo, resolved, notes


def preference_pairs(samples: list[Sample], candidates: int, typical: Typicality) -> list[dict]:
    """Each prompt's `candidates` samples (in a row, as generate_tunes returns a prompt repeated) as one DPO pair:
    prompt, chosen (the first by rerank_key with `typical`), rejected (the last); none where all rank alike."""
    keys = [rerank_key(sample, typical) for sample in samples]
    pairs = []
    for start in range(0, len(samples), candidates):
        order = sorted(range(start, start + candidates), key=keys.__getitem__)  # stable: ties keep sampling order
        worst, best = samples[order[0]], samples[order[-1]]
        if keys[order[0]] != keys[order[-1]]:
            prompt = best.prompt
            pairs.append({"prompt": prompt, "chosen": best.text[len(prompt):], "rejected": worst.text[len(prompt):]})
    return pairs


def _save(model, tokenizer, folder: Path, state: TrainerState) -> None:
    """A model folder as a Trainer checkpoint holds it (weights, tokenizer, trainer_state.json last)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state.save_to_json(str(folder / TRAINER_STATE_NAME))


def prefer(preference: PreferenceArguments, dpo: DPOConfig, resolved: dict, log=print) -> Path:
    """Run the rounds (module docstring); returns the output folder."""
    recipe = saved_recipe(preference.run)
    data_args = recipe_data_args(recipe)
    train = training_tunes(data_args)
    if not train:
        raise UserError(f"{preference.run}: its data has no training tunes to prompt from")
    typical = Typicality(train, with_form=True)
    fields = prompt_fields(data_args.keep_fields)
    model, tokenizer = load_checkpoint(preference.run)
    if "max_length" not in resolved:  # a pair is one tune: the model's context holds it
        dpo = replace(dpo, max_length=context_length(model.config))
    sampling = SampleArguments(constrain="none", max_repeats=0).settled(recipe.get("sampling"))
    out = Path(dpo.output_dir)
    step = global_step(preference.run) or 0
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(preference.run) / RECIPE_FILE, out / RECIPE_FILE)
    (out / PREFERENCE_FILE).write_text(json.dumps({**resolved, "run_step": step}, indent=2) + "\n")
    state = TrainerState(global_step=step)
    _save(model, tokenizer, out / f"checkpoint-{step}", state)
    for round_ in range(1, preference.rounds + 1):
        seed = dpo.seed + round_
        drawn = random.Random(seed).sample(train, min(preference.prompts, len(train)))
        prompts = [prompt_from_tune(tune, fields) for tune in drawn for _ in range(preference.candidates)]
        model.eval()
        samples = generate_tunes(model, tokenizer, prompts, replace(sampling, num_samples=len(prompts), seed=seed))
        pairs = preference_pairs(samples, preference.candidates, typical)
        folder = out / f"round-{round_}"
        folder.mkdir(exist_ok=True)
        (folder / "pairs.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
        log(f"round {round_}: {len(pairs)} pairs from {len(drawn)} prompts x {preference.candidates} candidates")
        if not pairs:
            log(f"round {round_}: every prompt's candidates ranked alike; nothing to prefer, stopping")
            break
        model.train()
        trainer = DPOTrainer(model=model, args=replace(dpo, output_dir=str(folder), seed=seed),
                             train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
        trainer.train()
        step += trainer.state.global_step
        state.global_step = step
        state.log_history += [{**entry, "round": round_} for entry in trainer.state.log_history]
        model.eval()
        _save(model, tokenizer, out / f"checkpoint-{step}", state)
    _save(model, tokenizer, out, state)
    return out
