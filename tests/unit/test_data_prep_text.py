"""Sentence splitting: biomedical abbreviations must not end sentences, for every splitter."""

import pytest

from data_prep.text import clean_text, make_splitter, train_punkt_params

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

TEXT = ("Patients received 5 mg i.v. daily, e.g. in the morning. Smith et al. reported approx. 5 cases "
        "(Fig. 2). The drug was given vs. placebo. Results were significant.")
EXPECTED = ["Patients received 5 mg i.v. daily, e.g. in the morning.",
            "Smith et al. reported approx. 5 cases (Fig. 2).",
            "The drug was given vs. placebo.",
            "Results were significant."]


@pytest.mark.parametrize("name", ["punkt", "blingfire"])
def test_biomedical_abbreviations_do_not_split(name):
    assert make_splitter(name)(TEXT) == EXPECTED


def test_punkt_trained_on_corpus_keeps_abbreviations():
    corpus = [TEXT] * 5 + ["The dose was 3 mg/kg i.p. twice. Mice were killed after 2 wk. Tissues were fixed."] * 5
    params = train_punkt_params(corpus)
    assert {"e.g", "i.v", "al", "fig"} <= params["abbrev_types"]
    assert make_splitter("punkt-trained", params)(TEXT) == EXPECTED


def test_unknown_splitter_is_an_error():
    with pytest.raises(ValueError, match="unknown sentence splitter"):
        make_splitter("spacy")


def test_clean_text():
    assert clean_text("  a\tb\n\nc\x00d\u200be  ") == "a b c d e"
    assert clean_text("e\u0301") == "\u00e9"  # NFC
    assert clean_text("") == ""
