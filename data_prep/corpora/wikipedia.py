"""English Wikipedia ``pages-articles`` dumps (``.xml.bz2`` or ``.xml``) -> one document per article.

No maintained wikitext-to-text library is in our dependency set (WikiExtractor is unmaintained and
not on PyPI in a usable form), so markup is stripped here with a small set of regexes that keep
link texts and drop templates, tables, references, files and headings. Good enough for pretraining
text, which is all this is for.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path
from typing import Iterator

from lxml import etree

from ..manifest import DataPrepError
from ..text import clean_text
from . import Document, Record, Skip

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]")
_HEADING = re.compile(r"^[ \t]*=+.*?=+[ \t]*$", re.M)
_QUOTES = re.compile(r"'{2,}")
_LIST = re.compile(r"^[*#:;]+\s*", re.M)


def strip_wikitext(text: str) -> str:
    text = _COMMENT.sub("", text)
    text = _REF.sub("", text)
    text = _TABLE.sub("", text)
    for _ in range(5):  # nested templates, innermost first
        text, n = _TEMPLATE.subn("", text)
        if not n:
            break
    text = _FILE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXT_LINK.sub(r"\1", text)
    text = _HEADING.sub("", text)
    text = _QUOTES.sub("", text)
    text = _LIST.sub("", text)
    text = _TAG.sub("", text)
    return clean_text(text)


def _open(path: Path):
    return bz2.open(path, "rb") if str(path).endswith(".bz2") else open(path, "rb")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_wikipedia_dump(path: Path, include_title: bool = True, **_unused) -> Iterator[Record]:
    path = Path(path)
    try:
        with _open(path) as f:
            for _, page in etree.iterparse(f, events=("end",), tag="{*}page", huge_tree=True):
                fields = {_local(c.tag): c for c in page}
                ns = fields.get("ns")
                if ns is not None and (ns.text or "0").strip() != "0":
                    yield Skip("not_article")
                elif "redirect" in fields:
                    yield Skip("redirect")
                else:
                    rev = fields.get("revision")
                    raw = ""
                    if rev is not None:
                        t = next((c for c in rev if _local(c.tag) == "text"), None)
                        raw = (t.text or "") if t is not None else ""
                    body = strip_wikitext(raw)
                    title = (fields["title"].text or "").strip() if "title" in fields else ""
                    page_id = (fields["id"].text or "").strip() if "id" in fields else title
                    if not body:
                        yield Skip("empty")
                    else:
                        yield Document(page_id, f"{title}. {body}" if include_title and title else body)
                page.clear()
                while page.getprevious() is not None:
                    del page.getparent()[0]
    except (EOFError, OSError) as e:
        raise DataPrepError(f"{path}: truncated or corrupt dump ({e}); download it again") from e
    except etree.XMLSyntaxError as e:
        raise DataPrepError(f"{path}: not a well-formed MediaWiki XML dump ({e})") from e
