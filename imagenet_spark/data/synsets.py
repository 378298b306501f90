"""The 1000 ILSVRC2012 synsets and their human names, shipped as package data (nothing downloads)."""

from __future__ import annotations

import functools
import re
from importlib import resources

_WNID = re.compile(r"^n\d{8}$")


def is_wnid(name: str) -> bool:
    """True for a WordNet id such as ``n01440764``."""
    return bool(_WNID.match(name))


@functools.lru_cache(maxsize=1)
def ilsvrc2012() -> dict[str, str]:
    """wnid -> human name for the 1000 ILSVRC2012 classes, in sorted wnid order."""
    text = resources.files("imagenet_spark").joinpath("resources/ilsvrc2012_synsets.tsv").read_text("utf-8")
    out: dict[str, str] = {}
    for line in text.splitlines():
        wnid, _, name = line.partition("\t")
        out[wnid] = name
    return out


def human_name(synset: str, known: dict[str, str] | None = None) -> str:
    """Best human name for a class: the dataset's own mapping, then ILSVRC2012's, then the class name itself."""
    if known and synset in known:
        return known[synset]
    return ilsvrc2012().get(synset, synset)
