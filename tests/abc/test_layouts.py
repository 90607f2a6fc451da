"""finetune.abc.layouts: TheSession's columns and folk-rnn's tokens become ABC tunes the reader reads."""

import pytest

from finetune.abc.check import analyse
from finetune.abc.layouts import from_folk_rnn, is_folk_rnn, session_key, session_tune


@pytest.mark.parametrize("mode, key", [("Gmajor", "G"), ("Edorian", "Edor"), ("F#minor", "F#m"), ("Amixolydian", "Amix"),
                                       ("Bbmajor", "Bb"), ("Dlydian", "Dlyd"), ("Gsomething", None), ("", None)])
def test_session_modes_are_keys(mode, key):
    assert session_key(mode) == key


def test_a_session_setting_gets_the_header_its_columns_say():
    tune = session_tune("The Kesh", "jig", "6/8", "Gmajor", "|:GAG GAB|ABA ABd:|\r\n|:edd gdd|edB dBA:|")
    assert tune == "T:The Kesh\nR:jig\nM:6/8\nL:1/8\nK:G\n|:GAG GAB|ABA ABd:|\n|:edd gdd|edB dBA:|\n"
    assert analyse(tune).valid
    assert session_tune("x", "reel", "4/4", "Hmajor", "ABcd|") == "" and session_tune("x", "reel", "4/4", "Dmajor", "  ") == ""


def test_folk_rnn_tokens_become_standard_abc():
    book = "M:6/8\nK:Cmaj\n|: G A B c 3 | d c B c 3 :|\n\nM:4/4\nK:Cdor\nG c c B c 2 B c | G 4 z 4 |\n"
    assert is_folk_rnn(book) and not is_folk_rnn("X:1\nM:6/8\nK:Cmaj\nGAB|\n")
    assert from_folk_rnn(book) == ["M:6/8\nL:1/8\nK:C\n|:GABc3|dcBc3:|\n", "M:4/4\nL:1/8\nK:Cdor\nGccBc2Bc|G4z4|\n"]
    assert all(analyse(tune).valid for tune in from_folk_rnn(book))


def test_mutated_layouts_convert_or_yield_nothing_never_raise(corpus):
    """Seeded fuzz: folk-rnn books and TheSession rows with ABC-significant edits convert or give no tune."""
    import random

    from test_fuzz import ABC_PIECES, mutate

    rng = random.Random(4)
    book = "M:6/8\nK:Cmaj\n|: G A B c 3 | d c B c 3 :|\n\nM:4/4\nK:Cdor\nG c c B c 2 B c | G 4 z 4 |\n"
    for _ in range(300):
        edited = mutate(book, rng, ABC_PIECES + ["K:Cmaj", "\n\n", "M:", "K:"], rng.randint(1, 6))
        for tune in from_folk_rnn(edited) if is_folk_rnn(edited) else []:
            analyse(tune)
    for tune in rng.sample(corpus["train"], 200):
        fields = [mutate(value, rng, ABC_PIECES, rng.randint(0, 3)) for value in ("Name", "reel", "4/4", "Dmajor")]
        text = session_tune(*fields, mutate(tune, rng, ABC_PIECES, rng.randint(0, 4)))
        assert text == "" or text.endswith("\n")
        analyse(text)
