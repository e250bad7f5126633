"""Real text without a network: the Wikipedia extract in gensim's wheel (installed with --no-deps; nothing
of gensim is imported). The articles are CC BY-SA, so they are read from the installed package and never
copied into this repository. Wiki markup is stripped to plain prose.
"""

from __future__ import annotations

import bz2
import functools
import html
import importlib.util
import re
from pathlib import Path

from kvsim.errors import KvsimError

_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _source() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise KvsimError("gensim's wheel is needed for real text: pip install --no-deps gensim==4.4.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / _FILE
    if not path.exists():
        raise KvsimError(f"{path} is missing from the installed gensim package")
    return path


def _strip(wikitext: str) -> str:
    t = html.unescape(wikitext)
    t = re.sub(r"<!--.*?-->", " ", t, flags=re.S)
    t = re.sub(r"<ref[^>]*/>", " ", t)
    t = re.sub(r"<ref.*?</ref>", " ", t, flags=re.S)
    for _ in range(4):  # nested templates and tables, innermost first
        t = re.sub(r"\{\{[^{}]*\}\}", " ", t)
        t = re.sub(r"\{\|[^{}]*?\|\}", " ", t, flags=re.S)
    for _ in range(3):  # plain links innermost first, so that file captions holding links come out whole
        t = re.sub(r"\[\[(?!(?:File|Image|Category):)(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*\]\]", " ", t)
    t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"<[^>]+>", " ", t)
    t = re.sub(r"'{2,}", "", t)
    t = re.sub(r"^[=*#:;|!].*$", " ", t, flags=re.M)
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in t.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if len(p) > 200 and "{" not in p and "}" not in p)


@functools.lru_cache(maxsize=1)
def articles() -> list[str]:
    """Plain-text articles, in file order."""
    raw = bz2.open(_source(), "rt", encoding="utf-8").read()
    out = []
    for m in re.finditer(r"<text[^>]*>(.*?)</text>", raw, flags=re.S):
        body = m.group(1)
        if body.lstrip().lower().startswith("#redirect"):
            continue
        clean = _strip(body)
        if len(clean) > 2000:
            out.append(clean)
    return out


def corpus(min_chars: int, skip: int = 0) -> str:
    """At least `min_chars` characters of prose, starting `skip` articles in (so that evaluation text and
    text used to fit anything, such as the learned scorer, never overlap)."""
    arts = articles()[skip:]
    text, n = [], 0
    for a in arts:
        text.append(a)
        n += len(a)
        if n >= min_chars:
            return "\n\n".join(text)
    raise KvsimError(f"the Wikipedia extract has fewer than {min_chars} characters after {skip} articles")
