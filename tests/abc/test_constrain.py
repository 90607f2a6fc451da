"""Constrained sampling: the MeterLogitsProcessor refuses exactly the tokens that would break syntax or the meter,
decided on the one ABC reader; and through generate it makes an untrained model write tunes the checker reads."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_finetune
from test_check import MUSIC_IN_QUOTES

from finetune.abc import policy
from finetune.abc.check import analyse
from finetune.abc.constrain import MeterLogitsProcessor
from finetune.abc.policy import MAX_SPACES
from finetune.tokenizer import build_abc_tokenizer

TOKENIZER = build_abc_tokenizer(256)


def allowed_after(text: str, max_new_tokens: int = 100) -> set[str]:
    """The token texts the processor keeps after `text`, when every token is equally likely."""
    processor = MeterLogitsProcessor(TOKENIZER, max_new_tokens=max_new_tokens, keep=len(TOKENIZER))
    ids = torch.tensor([TOKENIZER(text)["input_ids"]])
    scores = processor(ids, torch.zeros(1, len(TOKENIZER)))
    kept = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    return {"</s>" if i == TOKENIZER.eos_token_id else TOKENIZER.decode([i]) for i in kept}


HEADER = "M:6/8\nL:1/8\nK:D\n"
SECTION = HEADER + "A|d2d dcd|d2d dcd|d2d dcd|"  # a pickup and three bars: enough for a section to end


def test_a_full_bar_must_close_and_an_overlong_note_is_refused():
    full = allowed_after(HEADER + "A|d2d dcd|d2d dcd|d2d dcd")
    assert "|" in full and ":|" in full and "|]" in full
    assert not {"a", "z", "A"} & full  # a 7th unit would overflow 6/8
    assert "|" in allowed_after(HEADER + "A|d2d dc d")  # `d` fills the bar
    too_long = allowed_after(HEADER + "A|d2d dc d2")  # `d2` would overflow as it stands, `d2/` would not
    assert " " not in too_long and "|" not in too_long and "/" in too_long


def test_a_short_bar_closes_only_as_a_pickup_or_around_a_repeat():
    assert "|" in allowed_after(HEADER + "A")  # the opening pickup
    short = allowed_after(SECTION + "d3 ")
    assert ":|" in short  # a repeat may split a bar, and the next bar completes it
    assert not {"a", " "} & allowed_after(SECTION + "d3 |")  # `|` must grow into `||`, `|]` or `|:`
    assert allowed_after(SECTION + "d3 :|") >= {"d", "e"}  # the split bar's other half
    assert "|" not in allowed_after(SECTION + "d3 :|d2")  # ... lasts exactly 3
    # a section's own pickup, after a last bar that balanced the tune's: the two make one bar across `:|`
    assert "d" in allowed_after(SECTION + "d3 d2:|\nd|")
    assert "d" not in allowed_after(SECTION + "d3 d2:|\nd2|")
    assert "1" in allowed_after(SECTION + "[")  # `|[1`, as tunes write a variant ending too
    # a section opens at `|:` even with an empty bar before it: its last bar balances its own pickup
    from finetune.abc.reader import Reader

    bars, owed, opening = Reader().feed(HEADER + "d2d dcd|d2d dcd|d2d dcd|d3 d2:| |:d|d2d dcd|d2d dcd|d3 d2:|").bars, None, 0
    for index in range(len(bars)):
        owed, opening = policy.bar_closes(bars, index, owed, opening)
    assert (owed, opening) == (None, 4)  # no half bar owed after the last


def test_a_section_ends_only_once_it_holds_four_bars():
    """Found on the report page: constrained tunes closed a section every bar or two (`c4B2 |]`), since a short bar
    may close a section. Real tunes' sections are phrases of four bars or more; the opening pickup alone may
    stand before `|:`."""
    edges = ("||", "|]", ":|", "|:")
    for short in ("A|d2d dcd", "A|d2d dcd|d2d dcd", "d2d dcd|d2d dcd|d2d dcd"):  # the pickup is a bar
        written = allowed_after(HEADER + short)
        assert "|" in written and not set(edges) & written, short
    for four in ("A|d2d dcd|d2d dcd|d2d dcd", "d2d dcd|d2d dcd|d2d dcd|d2d dcd"):
        assert set(edges) <= allowed_after(HEADER + four), four
    assert "|:" in allowed_after(HEADER + "A")  # the pickup before the first repeat
    # a new section counts its bars afresh
    second = SECTION + "|d2d dcd"
    assert "||" not in allowed_after(second) and "||" in allowed_after(second + "|d2d dcd|d2d dcd|d2d dcd")


def test_the_prompted_meter_and_key_cannot_change_and_no_comment_or_field_line_starts():
    assert "%" not in allowed_after(SECTION + "\n")
    assert ":" not in allowed_after(SECTION + "\nM")  # `M` may be a decoration, never `M:` a field line
    inline = allowed_after(SECTION + "[")
    assert "M" not in inline and "K" not in inline and "L" not in inline and "c" in inline


def test_the_tune_ends_with_nothing_open_and_its_last_bar_as_the_checker_reads_it():
    assert "</s>" in allowed_after(SECTION + "d3 d2|]")
    # the end closes the last bar, as Essen tunes end (`E4z2` and a line break); a short one balances the pickup
    assert "</s>" in allowed_after(SECTION + "d3 d2") and "</s>" in allowed_after(SECTION + "d3 d2\n")
    assert "</s>" not in allowed_after(SECTION + "[df")  # a chord left open
    assert "</s>" not in allowed_after(SECTION + "(d3 d2")  # a slur left open
    assert "</s>" not in allowed_after(SECTION + "d3 d2-")  # a tie waiting for its note
    assert "</s>" not in allowed_after(SECTION + "d3 :|d")  # the other half of a bar split at `:|`, short


def test_a_note_is_not_shortened_past_what_can_still_close_the_bar():
    """Found in a sampled tune: after `ABGBG||` the next bar owes 1 unit, and `(3FE//E//` pays it exactly. `E///`
    left 1/12 that no written note can pay: the room test counted on shortening it to `E////`, a length the policy
    itself refuses, so the bar had no way to close on the meter and the processor let it run off."""
    owing = "M:3/4\nL:1/8\nK:A\nD2|ABGBG||(3FE//E//"
    assert "/" not in allowed_after(owing) and "|" in allowed_after(owing)
    assert "/" in allowed_after("M:3/4\nL:1/8\nK:A\nD2|ABGBG||(3F/E/E")  # `E/` pays it: (1/2 + 1/2 + 1/2) x 2/3


def test_what_abc2midi_refuses_is_not_written():
    """ABC allows these; abc2midi does not read them (each checked against abc2midi when the rules were made)."""
    decorated = allowed_after(HEADER + "A|d2d ~")
    assert "d" in decorated and not {" ", "|", "~", "H", '"', "{", "("} & decorated  # the roll waits for its note
    assert "[" not in decorated  # no roll on a chord
    tied = allowed_after(HEADER + "A|d2d d2-")
    assert "d" in tied and not {"e", "z", "^", "H", ":|"} & tied  # a tie waits for a note of the same pitch
    graced = allowed_after(HEADER + "A|d2d d{e}")
    assert "e" in graced and not {" ", "|", "~", '"', "{"} & graced  # grace notes wait for their note
    assert "|1" not in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd|1d3 d3")  # a second ending needs the first closed
    assert "|2" not in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd|d3 d3||")  # ... and the repeat it completes
    assert "|:" not in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd|d3 d3")  # no second `|:` while one is open
    assert "</s>" not in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd:|2d3 d3|")  # an ending left open
    assert "</s>" in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd:|2d3 d3|]")
    assert "-" not in allowed_after(HEADER + "A|d2d .d2") and "-" in allowed_after(HEADER + "A|d2d d2")  # no tied staccato
    assert "3" not in allowed_after(HEADER + "A|(3de (") and "3" in allowed_after(HEADER + "A|(3def (")  # nested tuplets
    assert "</s>" not in allowed_after(SECTION + ":") and "</s>" in allowed_after(SECTION + "]")
    assert "::" not in allowed_after(HEADER + "|:A|d2d dcd|d2d dcd|d2d dcd||")  # a token completing `||::`, which abc2midi reads apart
    # octave marks by case: `e,` and `E'` are refused
    assert "," not in allowed_after(HEADER + "A|d2d dce") and "'" not in allowed_after(HEADER + "A|d2d dcE")


def test_a_tune_with_chord_symbols_stops_on_a_beat_of_its_accompaniment():
    """abc2midi accompanies chord symbols through every bar; stopping inside a sounding beat leaves a chord on
    ("Sustained notes beyond end of track")."""
    assert "</s>" not in allowed_after(HEADER + '"D"A|d2d dcd|d2d dcd|d2d dcd|d/|]')  # a sixteenth into the last bar
    assert "</s>" in allowed_after(HEADER + '"D"A|d2d dcd|d2d dcd|d2d dcd|d2|]')  # a quarter
    assert "</s>" in allowed_after(SECTION + "d/|]")  # no chord symbol: no accompaniment
    assert "</s>" in allowed_after(HEADER + '"^fine"A|d2d dcd|d2d dcd|d2d dcd|d/|]')  # an annotation is no chord


@pytest.mark.skipif(shutil.which("abc2midi") is None, reason="abc2midi not installed (Debian: apt-get install abcmidi)")
def test_where_the_reader_lets_an_accompanied_tune_stop_abc2midi_holds_no_chord_on(tmp_path):
    """The rule, against abc2midi itself: every last bar the reader allows, in common and odd meters, with and
    without a pickup, ends clean; and the rule is not vacuous (abc2midi does flag some that it refuses)."""
    from fractions import Fraction

    from finetune.abc.check import _abc2midi_errors
    from finetune.abc.reader import read, unit_length

    refused_and_flagged = 0
    for meter in ("2/4", "3/4", "4/4", "C|", "6/8", "9/8", "5/4", "7/8"):
        top, bottom = (2, 2) if meter == "C|" else map(int, meter.split("/"))
        full = Fraction(top, bottom) * 16
        for pickup in ("", "A3|"):
            for last in range(1, int(full) + 1):
                tune = f'M:{meter}\nL:1/16\nK:G\n{pickup}"G"A{full} |"D"A{full}|A{last}|]\n'
                reader = read(tune)
                flagged = any("Sustained" in e for e in _abc2midi_errors(tune, tmp_path))
                if reader.abc2midi.may_stop_after(reader.bars[-1], unit_length(reader.meter, reader.unit)):
                    assert not flagged, tune
                refused_and_flagged += flagged
    assert refused_and_flagged > 20


def test_the_rest_of_a_split_bar_follows_its_repeat_at_once():
    """The checker pairs a short bar with the one right after its repeat mark; an empty bar between would part them."""
    after_repeat = allowed_after(SECTION + "d3 |:")
    assert "|" not in after_repeat and "d" in after_repeat


def test_a_note_in_a_tuplet_may_still_be_given_its_length():
    """`(3d4c2B` lasts 14/3 units as it stands, off the grid that whole notes reach; `B3` makes the tuplet 6."""
    assert "B" in allowed_after("M:2/4\nL:1/16\nK:G\nG2B2 ||(3d4c2")


def test_no_empty_line_and_no_long_run_of_spaces():
    """An empty line ends a tune in ABC; a long run of spaces is how a model fills a bar it may not close, while
    tunes align bars with a few."""
    assert "\n" not in allowed_after(HEADER)  # the body's first line
    assert "\n" not in allowed_after(SECTION + "\n ")
    assert "\n" in allowed_after(SECTION)
    assert " " in allowed_after(HEADER + "A|d2d" + " " * (MAX_SPACES - 1))
    assert " " not in allowed_after(HEADER + "A|d2d" + " " * MAX_SPACES)
    assert " " not in allowed_after(SECTION + "\n" + " " * MAX_SPACES)
    assert "`" not in allowed_after(HEADER + "A|d2d" + " `" * (MAX_SPACES // 2))  # backquotes: spacing too
    assert "`" in allowed_after(HEADER + "A|d2d" + "`" * (MAX_SPACES - 1))


def test_no_bar_without_music():
    """Blank bars (`| |`) are blank staves in tune books, and bars a sampler could write without music."""
    assert "|:" in allowed_after(SECTION + " ")
    blank = allowed_after(SECTION + " |")  # only a repeat or an ending may follow
    assert ":" in blank and "1" in blank and not {" ", "|", "d", "]"} & blank
    assert "|" in allowed_after(SECTION + "\n")  # a line may open with the bar line that closed the last


def test_a_space_follows_a_bar_line_that_may_close_there():
    """The reader holds `| ` open (ABC's `| 1` opens an ending); the space after a bar line is still judged as
    `|` closing its bar and then a space."""
    assert " " in allowed_after(HEADER + "A |")  # the pickup
    assert " " in allowed_after(HEADER + "A | d2d dcd |")
    assert "d" in allowed_after(HEADER + "A | d2d dcd | ")
    assert " " not in allowed_after(HEADER + "A | d2d dcd | d3 |")  # a short bar: `|` must grow into `||`...


def as_sampled(tune: str) -> tuple[str, str]:
    """A real tune as a prompt and the rest, without the layout that sampling refuses on purpose (line
    continuations, field lines such as `P:` inside the body, runs of more than MAX_SPACES spaces)."""
    import regex

    from finetune.abc import header_length
    from finetune.generation import prompt_from_tune

    body = tune[header_length(tune):].replace("\\\n", "\n")
    body = "".join(line for line in body.splitlines(keepends=True) if not regex.match(r"[A-Za-z]:", line))
    return prompt_from_tune(tune), regex.sub(f" {{{MAX_SPACES + 1},}}", " " * MAX_SPACES, body)


@pytest.mark.parametrize("merges", [0, 1024], ids=["characters", "1024 learned merges"])
@pytest.mark.integration
def test_real_tunes_that_keep_the_meter_pass_token_by_token(corpus, merges):
    """What a model learns from real tunes, the constraint lets it write: each held-out tune that the checker finds
    valid with every bar on the meter is fed token by token as the likeliest choice, and must be kept to its end.

    The rest use what the policy refuses on purpose (free text in quotes such as fingerings `"4"`, a decoration
    before a slur, a tie between different pitches, endings after a line break, blank bars). Measured: 556 of the
    625 tunes pass; 28 did before the space after a bar line was judged as `|` and a space, an unbarred last bar could end
    the tune, and a section's pickup could complete the bar before its repeat. With 1024 merges learnt from the
    training tunes (tokens such as `BG|` and `d2 `), 550 pass."""
    from finetune.packing import tokenize_batch
    from finetune.tokenizer import learn_merges

    tokenizer = build_abc_tokenizer(4096, learn_merges(corpus["train"], merges) if merges else [])
    passed, failed = 0, []
    for tune in corpus["validation"]:
        report = analyse(tune)
        if not report.valid or report.bars_off:
            continue
        prompt, body = as_sampled(tune)
        encode = lambda text: tokenize_batch({"text": [text]}, tokenizer)["input_ids"][0][:-1]  # noqa: E731
        ids, prompt_ids = encode(prompt + body), encode(prompt)
        assert ids[: len(prompt_ids)] == prompt_ids
        processor = MeterLogitsProcessor(tokenizer, max_new_tokens=len(ids) + 100, keep=1)
        written = torch.tensor([prompt_ids])
        for token in [*ids[len(prompt_ids):], tokenizer.eos_token_id]:
            scores = torch.zeros(1, len(tokenizer))
            scores[0, token] = 1.0
            if not torch.isfinite(processor(written, scores)[0, token]):
                failed.append(repr(tokenizer.decode(written[0, -12:]) + " -> " + tokenizer.decode([token])))
                break
            written = torch.cat([written, torch.tensor([[token]])], dim=1)
        else:
            passed += 1
    print(f"{passed} of {passed + len(failed)} pass")
    assert passed + len(failed) > 500 and passed >= 0.85 * (passed + len(failed)), failed[:20]


def test_near_the_budget_only_the_ending_is_kept():
    assert allowed_after(SECTION + "d3 d2|]", max_new_tokens=3) == {"</s>"}
    assert allowed_after(HEADER + "A|d2d dc |", max_new_tokens=10) == {"</s>"}  # a short last bar
    # ... but not while a slur is open: more would follow the short bar, and it would lie inside the tune
    assert allowed_after(HEADER + "(A|d2d dc |", max_new_tokens=10) == {")"}
    assert allowed_after(HEADER + "(A|d2d dc |)", max_new_tokens=10) == {"</s>"}



def test_where_the_model_would_end_the_tune_is_closed_and_ended():
    """A model that ranks the end first with a slur open and a bar half full is steered to close both and end, as
    near the budget; masking the end alone leaves it writing on where it meant to stop."""
    processor = MeterLogitsProcessor(TOKENIZER, max_new_tokens=500, keep=len(TOKENIZER))
    ids = torch.tensor([TOKENIZER(SECTION + "(d2d dc")["input_ids"]])
    eos = TOKENIZER.eos_token_id
    for _ in range(12):
        scores = torch.zeros(1, len(TOKENIZER))
        scores[0, eos] = 5.0
        token = int(processor(ids, scores)[0].argmax())
        if token == eos:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    tune = TOKENIZER.decode(ids[0], skip_special_tokens=True)
    assert token == eos and tune.startswith(SECTION + "(d2d dc)"), tune
    assert analyse(tune).valid, (tune, analyse(tune).errors)


def test_where_an_earlier_processor_masked_all_the_meter_allows_the_meter_still_gives_the_row_a_token():
    """Near the budget only the end is allowed; a loop limit that masked the end (a fourth copy of a block ending
    there) must not leave the row nothing to sample, which generate would fail on."""
    processor = MeterLogitsProcessor(TOKENIZER, max_new_tokens=3, keep=len(TOKENIZER))
    scores = torch.zeros(2, len(TOKENIZER))
    scores[0, TOKENIZER.eos_token_id] = float("-inf")
    ids = torch.tensor([TOKENIZER(SECTION + "d3 d2|]")["input_ids"]] * 2)
    kept = processor(ids, scores)
    assert torch.isfinite(kept).nonzero().tolist() == [[0, TOKENIZER.eos_token_id], [1, TOKENIZER.eos_token_id]]


@pytest.mark.integration
def test_constrained_sampling_makes_an_untrained_model_write_tunes_that_pass():
    """An untrained model (fresh weights) writes noise that no checker passes (validity 0, bar consistency 0:
    test_bar_consistency_is_high_for_real_tunes_and_low_for_noise); constrained, its tunes keep syntax and meter.
    Issue 12 asks for 0.95 and 0.98; the floor leaves a margin for the other CPU kind's arithmetic, which samples
    other tunes from the same seed."""
    from conftest import untrained_samples

    tunes = untrained_samples(count=32, constrain="meter")
    reports = [analyse(tune) for tune in tunes]
    validity = sum(r.valid for r in reports) / len(reports)
    bars = 1 - sum(r.bars_off for r in reports) / sum(r.bars_total for r in reports)
    print(f"constrained untrained model: validity {validity:.3f}, bars on the meter {bars:.3f}")
    assert validity >= 0.9 and bars >= 0.98


@pytest.mark.integration
def test_stopping_once_top_p_is_settled_samples_the_very_same_tunes(monkeypatch):
    """The processor stops looking for allowed tokens once top-p's choice cannot change; sampled with the same
    seed, the tunes are token for token those of a search for all `keep` allowed tokens, at fewer tries."""
    import json

    from conftest import TINY_RECIPE
    from transformers import AutoConfig, AutoModelForCausalLM, LogitsProcessorList, set_seed

    config = AutoConfig.for_model("llama", vocab_size=len(TOKENIZER), bos_token_id=TOKENIZER.bos_token_id,
                                  eos_token_id=TOKENIZER.eos_token_id, **json.loads(TINY_RECIPE.read_text())["model_config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked next-token distributions, as a trained model's are
    prompt = torch.tensor([TOKENIZER(HEADER)["input_ids"]] * 4)
    tunes, tries, verdict = {}, {}, policy.verdict
    for name, top_p in (("settled", 0.8), ("full search", 1.0)):
        processor = MeterLogitsProcessor(TOKENIZER, max_new_tokens=120, keep=8, temperature=1.2, top_p=top_p)
        processor._surely_refused = lambda state: None  # every token tried: the tries count top-p's saving alone
        calls = []
        monkeypatch.setattr(policy, "verdict", lambda *args, calls=calls, **kwargs: calls.append(1) or verdict(*args, **kwargs))
        set_seed(1)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=LogitsProcessorList([processor]),
                             do_sample=True, temperature=1.2, top_k=8, top_p=0.8, max_new_tokens=120,
                             pad_token_id=TOKENIZER.pad_token_id, eos_token_id=TOKENIZER.eos_token_id)
        tunes[name], tries[name] = out.tolist(), len(calls)
    assert tunes["settled"] == tunes["full search"]
    print(tries)
    assert tries["settled"] < 0.75 * tries["full search"]  # measured: 0.71


@pytest.mark.integration
def test_refusing_without_trying_keeps_exactly_the_tokens_that_trying_each_keeps():
    """Where the token being written is refused as it stands (a bar line closing a short bar, a note overfilling
    its bar) or the bar is full, the processor refuses texts without trying each (`_surely_refused`). Over
    prefixes of real tunes cut anywhere in the body and given such an ending, it keeps exactly the tokens a
    search that tries every one keeps, near the budget and away from it."""
    import random

    from finetune.abc import header_length
    from finetune.data import BUILTIN_DIR

    rng = random.Random(12)
    tunes = [json.loads(line)["text"] for line in open(BUILTIN_DIR / "validation.jsonl")][:200]
    endings = ["|", "G3", "d2", "A4", "z6", ":|", "[dg]3", "|d3", "c<", "B>", " ", "d4|", "e6 ", "|:", "(3"]
    states, stuck = 0, 0
    for tune in tunes:
        start = header_length(tune)
        if start >= len(tune) - 2:
            continue
        prefix = tune[: rng.randrange(start, len(tune))] + rng.choice(endings)
        encoded = torch.tensor([TOKENIZER(prefix)["input_ids"]])
        scores = torch.randn(1, len(TOKENIZER), generator=torch.Generator().manual_seed(states))
        for budget in (400, 20):
            passing = MeterLogitsProcessor(TOKENIZER, max_new_tokens=budget, keep=len(TOKENIZER))
            trying = MeterLogitsProcessor(TOKENIZER, max_new_tokens=budget, keep=len(TOKENIZER))
            trying._surely_refused = lambda state: None
            kept = [torch.isfinite(p(encoded, scores.clone())[0]).nonzero().flatten().tolist() for p in (passing, trying)]
            assert kept[0] == kept[1], (prefix, budget)
            stuck += passing._surely_refused(passing.rows[0]) is not None
            states += 1
    assert states > 300 and stuck > 40, (states, stuck)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("abc2midi"), reason="abcmidi not installed (apt-get install abcmidi): issue 12's figures are abc2midi's")
def test_constrained_sampling_rescues_the_3_step_checkpoint_of_the_documented_recipe(tmp_path):
    """recipes/music_abc.json after 3 steps (its learning rate then is 1.5e-7, 2000 warmup steps: the weights
    are still the initialisation's) writes noise; through MeterLogitsProcessor its 64 tunes for held-out prompts
    keep their bars on the meter and pass abc2midi (issue 12's targets, 0.98 and 0.95), and most end within a
    budget of 256 tokens. fp32 and one accumulation step, so that the 3 steps take seconds on any CPU: neither
    changes what 3 steps at that learning rate leave."""
    out = tmp_path / "music_abc_3steps"
    run_finetune(REPO / "recipes" / "music_abc.json", "--max_steps", 3, "--bf16", "false", "--gradient_accumulation_steps", 1,
                 "--save_strategy", "no", "--eval_strategy", "no", "--output_dir", out)
    result = subprocess.run(
        [sys.executable, "evaluate_checkpoints.py", str(out), "--checker", "abc2midi", "--max_new_tokens", "256"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    own, constrained = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    print(result.stdout)
    assert own["validity"] <= 0.2 and own["bar_consistency"] <= 0.5  # noise, unconstrained
    assert constrained["validity"] >= 0.95 and constrained["bar_consistency"] >= 0.98
    # noise takes longer to end since a section must hold four bars; the steering to an ending still ends nine in ten
    assert constrained["header_adherence"] >= 0.98 and constrained["truncation"] <= 0.1


def test_one_named_decoration_to_a_note_as_tune_books_write_them():
    """A named decoration waits for its note as a symbol does: no second decoration or symbol, no bar line and no
    end first (a model that could not end wrote lines of `!diminuendo(!`); after the note, the next is free."""
    from finetune.abc.policy import TuneState, advance, may_end, verdict
    from finetune.abc.reader import Reader

    state = TuneState(Reader())
    advance(state, "M:4/4\nL:1/4\nK:G\nG A B c|")
    assert verdict(state, "!f!") is not None
    advance(state, "!diminuendo(! ")
    assert verdict(state, "!") is None and verdict(state, '"Am"') is None and verdict(state, "|") is None
    assert not may_end(state)
    assert verdict(state, "A") is not None and verdict(state, "z") is not None and verdict(state, "[GB]") is not None
    advance(state, "A B c d|")
    assert verdict(state, "!p!") is not None and may_end(state)


def test_one_chord_symbol_or_annotation_to_a_note_and_none_blank():
    """A symbol waits for its note: a second symbol, a bar line or the end cannot come first; an annotation says
    something (`"> "` and `"^ "` are refused); after the note, the next symbol is free again."""
    from finetune.abc.policy import TuneState, advance, may_end, verdict
    from finetune.abc.reader import Reader

    state = TuneState(Reader())
    advance(state, "M:4/4\nL:1/4\nK:G\nG A B c|")
    assert verdict(state, '"Am"') is not None and verdict(state, '"> "') is None and verdict(state, '"^ x"') is None
    advance(state, '"Am" ')
    assert verdict(state, '"B"') is None and verdict(state, "|") is None and not may_end(state)
    assert verdict(state, "A") is not None and verdict(state, "z") is not None and verdict(state, "[GB]") is not None
    advance(state, "A B c d|")
    assert verdict(state, '"D7"') is not None and may_end(state)


def test_no_slur_closes_over_no_note_and_no_spacer():
    """A slur closes once it holds a note; `y` is never written, alone or in a run of spaces, nor is the invisible
    rest `x` or a quadruplet."""
    from finetune.abc.policy import TuneState, advance, verdict
    from finetune.abc.reader import Reader

    state = TuneState(Reader())
    advance(state, "M:4/4\nL:1/4\nK:G\nG A B c|(")
    assert verdict(state, ")") is None and verdict(state, " )") is None and verdict(state, "\n)") is None
    assert verdict(state, "y") is None and verdict(state, " y ") is None
    assert verdict(state, "x") is None and verdict(state, "z") is not None
    assert verdict(state, "(4") is None and verdict(state, "(3") is not None  # no corpus tune writes a quadruplet
    advance(state, "d")
    assert verdict(state, ")") is not None and verdict(state, " c)") is not None


def test_quoted_strings_are_chords_and_words_as_tune_books_write_them():
    """What the checker refuses as music in quotes, the policy never lets the model begin to write; a chord symbol
    and a one-word annotation as the corpus writes them are allowed."""
    from finetune.abc.policy import TuneState, advance, verdict
    from finetune.abc.reader import Reader

    state = TuneState(Reader())
    advance(state, "M:4/4\nL:1/4\nK:G\nG A B c|")
    read_as_text = ['"^Segbe2b2 e2e"', '"^G2"', '">z D.C.C.B,.A"', '"^Bad"', '"^Segbe"']  # by the checker
    for quoted in MUSIC_IN_QUOTES + read_as_text:
        assert verdict(state, quoted) is None, quoted
    for quoted in ['"Am7/G"', '"G7/b"', '"Gsus4"', '"C7b9"', '"^Segno"', '"_D.C."', '"^SEGUE"', '"_cresc."', '"^4"']:
        assert verdict(state, quoted) is not None, quoted
