"""finetune.abc.check: the strict checker on real and corrupted corpus tunes, bar durations, the command."""

import json
import random
import shutil
import string
import subprocess
import sys
from fractions import Fraction

import pytest
from conftest import REPO, untrained_samples

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
@pytest.mark.integration
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
@pytest.mark.integration
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


@pytest.mark.integration
def test_bar_consistency_is_high_for_real_tunes_and_low_for_noise(corpus):
    """The metric can fail: >= 0.95 on real held-out tunes, <= 0.2 when their body characters are shuffled,
    <= 0.15 on an untrained model's tunes, whose bars a lenient rule would count as on the meter."""
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
    garbage = analyse("M:6/8\nL:1/8\nK:D\nd2d dcd|xxQQxxQx:|d2d dcd|\n")  # unreadable text: never on the meter
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


@pytest.mark.parametrize("checker", CHECKERS)
def test_quoted_text_heaped_in_place_of_music_fails_and_real_pairs_pass(checker):
    """A heap of chord symbols and annotations with no note under them passes abc2midi but not the checker; an
    annotation beside a chord symbol, as tune books write them, passes."""
    heaped = 'M:4/4\nL:1/4\nK:Am\n"Am"D2 D2|D2 FA|"> " "B2"    "Am"    "B" "A"    |\n'
    paired = 'M:4/4\nL:1/4\nK:Am\n"Am"A2 "^fine""D"B2|c4|\n'
    heaped_report, paired_report = check_tunes([heaped, paired], checker)
    assert not heaped_report["valid"] and any("5 chord symbols or annotations in a row" in e for e in heaped_report["errors"])
    assert paired_report["valid"], paired_report["errors"]


# Quoted strings the CPU recipe's constrained tunes wrote, each over a note, before the policy held annotations to a
# word: music and a chord with a note's length, which abc2midi passes and never plays.
MUSIC_IN_QUOTES = ['"B22/B"', '"E2add22/A"', '"A2"', '">ABc) d2 d2 e"', '"<and> G)>A B2"', '">2 c/2 A/2 G/"',
                   '"<deB) (3deB ("', '"_ed))    (BA)"', '">4 d-c (3Adc "', '">AGFEDEFG."',
                   '">ABAGFGEMD."']
# And text in quotes as tune books write it (the corpus's own strings, and chords and words like them): chords,
# words, abbreviations, fingering, labels.
TEXT_IN_QUOTES = ['"Am7/G"', '"G7/b"', '"Gsus4"', '"Badd4"', '"B9b5/db"', '"^Segno"', '"_D.C."', '"4"', '"> 2,4"',
                  '"_D2"', '"(End)"', '"2nd time: cut time (2/4)"', '"^fermat:a"', '"DC al (S)"', '"play a D"',
                  '"^Bad"']


@pytest.mark.parametrize("checker", CHECKERS)
def test_music_written_in_quotes_fails_and_text_in_quotes_passes(checker):
    """A quoted string that holds notes with their lengths, or a root with a number no chord writes, is music the
    player never hears; the strings tune books write over their notes pass."""
    tune = 'M:4/4\nL:1/4\nK:Am\n{}A2 B2|c4|\n'
    reports = check_tunes([tune.format(quoted) for quoted in MUSIC_IN_QUOTES + TEXT_IN_QUOTES], checker)
    for quoted, report in zip(MUSIC_IN_QUOTES, reports):
        assert not report["valid"] and any(quoted in e for e in report["errors"]), (quoted, report["errors"])
    for quoted, report in zip(TEXT_IN_QUOTES, reports[len(MUSIC_IN_QUOTES):]):
        assert report["valid"], (quoted, report["errors"])


@pytest.mark.parametrize("checker", CHECKERS)
def test_slurs_over_no_note_fail_and_slurs_over_notes_or_grace_notes_pass(checker):
    """Lines of `)    (` (what constrained tunes wrote where they could not end) pass abc2midi but not the
    checker; slurs over notes, nested slurs and a slur over grace notes, as tune books write them, pass."""
    filler = "M:4/4\nL:1/4\nK:D\n(D2 E2)|F4|(A2 B2) (\n    )    (\n    )    (\n)|d4|\n"
    slurred = "M:4/4\nL:1/4\nK:D\n(D2 E2)|((F2 G) A)|(A2 ({ag}B2)|d4|\n"
    filler_report, slurred_report = check_tunes([filler, slurred], checker)
    assert not filler_report["valid"] and any("3 slurs with no note" in e for e in filler_report["errors"])
    assert slurred_report["valid"], slurred_report["errors"]


@pytest.mark.parametrize("checker", CHECKERS)
def test_decorations_heaped_in_place_of_music_fail_and_one_on_a_note_passes(checker):
    """Lines of named decorations over no note (what a constrained model wrote where it could not end) pass
    abc2midi but not the checker; one on its note passes."""
    heaped = "M:4/4\nL:1/4\nK:F\nF2 F2|c4|\n!f!\n    !diminuendo(!!diminuendo(!\n    !mf!\n"
    marked = "M:4/4\nL:1/4\nK:F\n!f!F2 F2|!diminuendo(!c2 !diminuendo)!A2|F4|\n"
    heaped_report, marked_report = check_tunes([heaped, marked], checker)
    assert not heaped_report["valid"] and any("4 decorations in a row" in e for e in heaped_report["errors"])
    assert marked_report["valid"], marked_report["errors"]


@pytest.mark.skipif(not shutil.which("abc2midi"), reason="abc2midi not installed (apt-get install abcmidi)")
def test_an_instruction_field_abc2midi_does_not_know_is_no_error():
    """Tune books write `I:` lines for other software (`I: :: ::`); abc2midi complains and plays the tune anyway."""
    tune = "M:4/4\nL:1/4\nI: :: ::\nK:D\nABcd|efga|\n"
    (report,) = check_tunes([tune], "abc2midi")
    assert report["valid"], report["errors"]
    (broken,) = check_tunes([tune.replace("efga", "ef#ga")], "abc2midi")  # the rule excuses that field only
    assert not broken["valid"]
