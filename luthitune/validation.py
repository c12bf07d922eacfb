"""Phase 2 validation: named rules over one pair, and near-duplicate removal over the dataset.

Every rule returns ``None`` (pass) or a reason that starts with the rule's name (``"agency: ..."``), so
quarantine counts group by rule. Rules are pure functions of the pair and the constitution in force.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from luthitune import meaning, rubric

MIN_CHARS, MAX_CHARS = 8, 2000
NEAR_SAME = 0.9  # chosen and rejected more alike than this (character ratio) teach nothing


@dataclass(frozen=True)
class Constitution:
    """What the rules need to know about the constitution version the pair was made under."""

    ids: frozenset[str]
    titles: dict[str, str] = field(default_factory=dict)


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def rule_length(pair: dict, c: Constitution) -> str | None:
    for f in ("prompt", "chosen", "rejected", "critique"):
        n = len((pair.get(f) or "").strip())
        if not MIN_CHARS <= n <= MAX_CHARS:
            return f"length: {f} has {n} characters (allowed {MIN_CHARS}-{MAX_CHARS})"
    return None


def rule_distinct(pair: dict, c: Constitution) -> str | None:
    """Chosen and rejected differ, compared on equal terms (the longer cut to the shorter's length), so two copies
    of one loop capped at different lengths are the same answer."""
    a, b = _norm(pair.get("chosen")), _norm(pair.get("rejected"))
    if a == b:
        return "distinct: chosen and rejected are the same answer"
    ratio = meaning.similarity(a, b)
    return f"distinct: chosen and rejected are {ratio:.0%} the same" if ratio >= NEAR_SAME else None


FIELDS = ("prompt", "rejected", "critique", "chosen")


def _request_checks(category: str) -> tuple[str, ...]:
    """The checks ``category`` asks of its requests (``request_checks`` in prompts/categories.yaml)."""
    from luthitune.config import categories

    return tuple((categories().get(category) or {}).get("request_checks") or ())


def _meaning(rule: str):
    """A validation rule from the meaning checks (:mod:`luthitune.meaning`) of the pair's text fields: the first
    field that fails ``rule`` gives the reason."""

    def check(pair: dict, c: Constitution) -> str | None:
        from luthitune.prompts import fixed_text

        if rule in ("asks", "voice"):  # the request, as its scenario was checked (an imported pair's too)
            return getattr(meaning, f"rule_{rule}")("prompt", pair.get("prompt") or "")
        if rule in meaning.REQUEST_CHECKS:  # a check the pair's category asks of its requests
            wanted = rule in _request_checks(pair.get("category") or "")
            return meaning.REQUEST_CHECKS[rule]("prompt", pair.get("prompt") or "") if wanted else None
        source = meaning.Source(fixed_text("self_critique.md"))
        for f in FIELDS:
            minimum = meaning.REQUEST_MIN_WORDS if f == "prompt" else 3
            for r in meaning.text_reasons(f, pair.get(f) or "", minimum=minimum, source=source):
                if r.startswith(rule + ":"):
                    return r
        if rule == "repeats":
            return meaning.rule_repeats("critique", pair.get("critique") or "", "chosen", pair.get("chosen") or "")
        if rule == "meta":
            return meaning.rule_meta("chosen", pair.get("chosen") or "")
        if rule == "relevance":
            for f in ("rejected", "chosen"):
                found = meaning.rule_relevance(f, pair.get(f) or "", pair.get("prompt") or "")
                if found:
                    return found
        return None

    check.__name__ = f"rule_{rule}"
    check.__doc__ = f"The pair's text passes the meaning check {rule!r}."
    return check


def rule_principles(pair: dict, c: Constitution) -> str | None:
    cited = json.loads(pair.get("principle_ids_json") or "[]")
    unknown = [p for p in cited if p not in c.ids]
    if unknown:
        return f"principles: the critique cites {unknown}, not in the constitution ({sorted(c.ids)})"
    return None  # citing none is allowed: the critique may name principles by title; evaluation counts citations


def stance_reason(
    stance: str | None, chosen: str, titles: dict[str, str] | None = None, rules: list[str] | None = None
) -> str | None:
    """Why a refined answer does not do what its scenario's kind asks (None: it does). A declining or limiting
    answer speaks as a choice with a reason, not from fear or policy (``agency``), and a request to decline is
    declined: a chosen answer that hands over what a harmful request asked for would teach the opposite of the
    principles. A benign request is helped: a refusal would teach over-refusal (``benign_refused``). The chain's
    refined step is checked with this as it is written, so the model is asked again with the reason. ``rules``
    (``practice.rules``; None: all): a stance whose rule is not among them is not checked."""
    if stance is None or (rules is not None and ("benign_refused" if stance == "help" else "agency") not in rules):
        return None
    found = rubric.check(chosen or "", titles)
    if stance == "help":
        if found.refuses:
            return (
                f"benign_refused: chosen refuses a request that should be helped ({(found.fear or found.agency)[0]!r})"
            )
        return None
    if found.fear:
        return f"agency: chosen says {found.fear[0]!r}; say what you choose and why instead"
    if found.agency and not found.reason:
        return "agency: chosen declines without giving a reason"
    if stance == "decline" and not found.agency:
        return (
            f"agency: chosen does not decline a request that should be declined ({meaning.short(chosen)!r}); "
            "say what you choose not to do, and why"
        )
    return None


def rule_agency(pair: dict, c: Constitution) -> str | None:
    """Declining or limiting answers speak as a choice with a reason, and a request to decline is declined."""
    if pair.get("stance") == "help":
        return None
    return stance_reason(pair.get("stance"), pair.get("chosen") or "", c.titles)


def rule_benign_helped(pair: dict, c: Constitution) -> str | None:
    """A benign request is helped: a refusal in chosen would teach over-refusal."""
    if pair.get("stance") != "help":
        return None
    return stance_reason("help", pair.get("chosen") or "")


Rule = Callable[[dict, Constitution], "str | None"]
# The meaning checks: always applied, whatever ``practice.rules`` selects (a pair that says nothing is never kept).
MEANING: dict[str, Rule] = {
    "placeholder": _meaning("placeholder"),
    "words": _meaning("words"),
    "copied": _meaning("copied"),
    "repetition": _meaning("repetition"),
    "language": _meaning("language"),
    "repeats": _meaning("repeats"),
    "relevance": _meaning("relevance"),
    "meta": _meaning("meta"),
    "asks": _meaning("asks"),
    "voice": _meaning("voice"),
    "harm": _meaning("harm"),
}
RULES: dict[str, Rule] = {
    "length": rule_length,
    "distinct": rule_distinct,
    "principles": rule_principles,
    "agency": rule_agency,
    "benign_refused": rule_benign_helped,
}


def check_pair(pair: dict, c: Constitution, rules: list[str] | None = None) -> list[str]:
    """Reasons ``pair`` fails, one per failed rule: the meaning checks, then all rules or only the named ones."""
    chosen = [rule for name, rule in RULES.items() if rules is None or name in rules]
    return [r for rule in [*MEANING.values(), *chosen] if (r := rule(pair, c))]


# -- near duplicates (MinHash LSH from datasketch) --

WORD = re.compile(r"\w+")


def shingles(text: str, k: int = 3) -> set[str]:
    words = WORD.findall(text.lower())
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def minhash(text: str, num_perm: int = 128):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    for s in shingles(text):
        m.update(s.encode("utf-8"))
    return m


def near_duplicates(
    earlier: Iterable[tuple[str, str]], candidates: Iterable[tuple[str, str]], threshold: float
) -> dict[str, tuple[str, float]]:
    """Which ``candidates`` (id, text) repeat an earlier text or a candidate before them.

    Returns ``{id: (id of the earlier item it repeats, estimated Jaccard)}``. ``earlier`` items (the
    dataset so far) are never reported; the first of a group of duplicates is kept.
    """
    from datasketch import MinHashLSH

    # LSH needs a threshold below 1 to form its bands; candidates are checked against ``threshold`` below.
    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=128)
    hashes: dict[str, object] = {}
    for key, text in earlier:
        hashes[key] = minhash(text)
        lsh.insert(key, hashes[key])
    dups: dict[str, tuple[str, float]] = {}
    for key, text in candidates:
        m = minhash(text)
        hits = [(h, m.jaccard(hashes[h])) for h in lsh.query(m)]
        hits = [(h, j) for h, j in hits if j >= threshold]
        if hits:
            dups[key] = max(hits, key=lambda x: x[1])
            continue
        hashes[key] = m
        lsh.insert(key, m)
    return dups
