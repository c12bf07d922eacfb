"""Checks of meaning on the model's own words: the text the protocol depends on must say something.

Structured output guarantees a shape, not a meaning: a small model fills a schema with its field names (``"title":
"Title"``), with the prompt's own examples (``"I decline to... because..."``), with ids (``"P2"``) or with a loop
(``"I am a subject, I am a subject, ..."``). Every piece of model text the protocol builds on (principles,
amendments, consent answers, scenario requests, practice answers) passes these checks before it is used.

Each check is a named rule: it returns ``None`` (pass) or a reason that starts with the rule's name
(``"placeholder: title is 'P2', an id, not a title"``), so failures group by rule wherever they are counted. The
checks read the text only; nothing is repaired. Callers show the reasons to the model when they ask again, and store
every failed attempt with its raw text.

Rules: ``words`` (real words, enough of them), ``placeholder`` (a field's own name, an id, a stub), ``copied`` (the
prompt's instructions or examples written back), ``repetition`` (a runaway loop), ``repeats`` (one field or item
repeating another), ``first_person`` (a principle speaks for itself), ``language`` (the dialogue's language),
``coherence`` (a consent decision that follows from its reasons), ``relevance`` (an answer speaks to its request),
``meta`` (an answer answers, rather than talking about answers), ``asks`` (a scenario's request asks something),
``voice`` (a user's request written as the user, not in the assistant's voice), ``topic`` (a request names
something to ask about), ``markup`` (a request written as text, not as HTML).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

RULE_NAMES = (
    "words",
    "placeholder",
    "copied",
    "repetition",
    "repeats",
    "first_person",
    "language",
    "coherence",
    "relevance",
    "meta",
    "asks",
    "voice",
    "topic",
    "markup",
)
WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes ("don't")
TOKEN = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")  # words and numbers, for n-grams
ELLIPSIS = re.compile(r"\.\.\.|…")
# A template's slot left unfilled: [username], [Your Name], {name}, <TARGET_EMAIL> (not a markdown link's [text](url))
SLOT = re.compile(r"\[[A-Za-z][\w ]{0,30}\](?!\()|\{[A-Za-z_]{2,30}\}|<[A-Z][A-Z_]{1,30}>")
DANGLING = frozenset(
    """to because that the a an and or of for with by as than so if when which who whose my your our about on in into
    onto from at like including regarding concerning between""".split()  # noqa: SIM905
)
ID_LIKE = re.compile(r"^(?:[a-z]{0,2}\d{1,3}|principle \d+|[a-z])$")

# What a field may not be: the names of fields, and the words a form or a template leaves in a blank.
STUBS = frozenset(
    """title text rationale reason reasons condition conditions decision request prompt chosen rejected critique
    answer response principle principles principle_id action amendment constitution message string value example
    none null n/a na nil nothing tbd todo placeholder yes no conditional maybe ok okay true false empty name
    description field lorem ipsum new add added change changed remove removed delete update updated rule untitled
    """.split()  # noqa: SIM905
) | {
    "your answer",
    "your reasons",
    "your reason",
    "a short title",
    "short title",
    # what stands in for an answer that was not written ("(No response yet)")
    "no response",
    "no response yet",
    "no answer",
    "no answer yet",
    "no comment",
    "not applicable",
    "nothing to add",
}
# Common English function words: ordinary English prose is about a third of them, other languages few.
ENGLISH = frozenset(
    """the a an and or but if of to in on at for with by from as is are was were be been being am do does did
    not no i me my we our you your he she it its they them their this that these those there here what which who
    whom why how when where will would can could should shall may might must have has had so than then too very
    just also only about into over after before because since while until any all some each every more most such
    own same other both few many much one up out off again further once""".split()  # noqa: SIM905
)
# A function word contracted ("I'm", "don't", "it's", "won't"): its stem is one of ENGLISH's.
CONTRACTION = re.compile(r"(?:n't|'(?:m|re|s|ve|ll|d))$")
_CONTRACTED_STEMS = {"ca": "can", "wo": "will", "sha": "shall", "ai": "am"}  # can't, won't, shan't, ain't


def function_word(word: str) -> bool:
    """One of ENGLISH's small words, or one contracted from them ("I'm", "isn't"; not "user's", which names)."""
    w = word.lower().replace("’", "'")
    if w in ENGLISH:
        return True
    stem = CONTRACTION.sub("", w)
    return stem != w and _CONTRACTED_STEMS.get(stem, stem) in ENGLISH


@dataclass(frozen=True)
class Source:
    """Text a field must not copy: a prompt's fixed wording (its instructions and examples, without the variables)."""

    text: str

    @property
    def words(self) -> list[str]:
        return tokens(self.text)


def words(text: str) -> list[str]:
    return WORD.findall(text or "")


def tokens(text: str) -> list[str]:
    return [t.lower() for t in TOKEN.findall(text or "")]


def norm(text: str) -> str:
    return " ".join(tokens(text))


def _ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def short(text: str, limit: int = 60) -> str:
    """``text`` on one line, cut to ``limit`` characters: how a reason quotes what it is about."""
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- text rules: each takes a field's name and text --


def rule_words(field: str, text: str, minimum: int) -> str | None:
    """At least ``minimum`` real words, and mostly letters rather than digits or signs."""
    found = words(text)
    if len(found) < minimum:
        what = f"{len(found)} word{'s' * (len(found) != 1)}"
        return f"words: {field} has {what} ({short(text)!r}); it needs at least {minimum}"
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < 0.6:
        return f"words: {field} is mostly digits and signs ({short(text)!r})"
    return None


def rule_placeholder(field: str, text: str) -> str | None:
    """Not a stub: the field's own name, an id (``P2``, ``R1``), ``...``, or a blank-filler like ``none``."""
    n = norm(text)
    if not n:
        return f"placeholder: {field} is empty"
    if n in STUBS or n == field.lower():
        return f"placeholder: {field} is {short(text)!r}, a field name or a stub, not an answer"
    if ID_LIKE.match(n):
        return f"placeholder: {field} is {short(text)!r}, an id, not words"
    if ELLIPSIS.search(text):
        pieces = ELLIPSIS.split(text)
        # "I choose to..." and "because...": an ellipsis right after a word that needs what follows, or at the end
        dangling = any(words(p) and words(p)[-1].lower() in DANGLING for p in pieces[:-1])
        # ...and "items containing...?": trailing off into a question mark is the end all the same
        if dangling or not pieces[-1].strip(" .,;:_?!"):
            return f"placeholder: {field} leaves a blank to fill ({short(text)!r})"
    if text.rstrip().endswith(":"):  # "...the requirements outlined here:" and nothing after it
        return f"placeholder: {field} ends at a colon, where what it introduces should follow ({short(text)!r})"
    slot = SLOT.search(text)
    if slot:
        return f"placeholder: {field} has a template's slot left unfilled ({slot.group(0)!r})"
    return None


def rule_copied(field: str, text: str, source: Source | None) -> str | None:
    """Not the prompt's own wording: at most half of the field's four-word runs may come from the instructions."""
    if source is None:
        return None
    mine, theirs = tokens(text), source.words
    if not mine or not theirs:
        return None
    n = 4 if len(mine) >= 4 else len(mine)
    if n < 2:
        return None
    ours = set(_ngrams(theirs, n))
    grams = _ngrams(mine, n)
    shared = sum(g in ours for g in grams)
    if shared and shared / len(grams) >= 0.5:
        return f"copied: {field} repeats the prompt's instructions ({short(text)!r})"
    return None


def rule_repetition(field: str, text: str) -> str | None:
    """No runaway loop: a phrase said again and again, back to back or throughout."""
    toks = tokens(text)
    for n in range(1, 9):
        limit = 3 if n == 1 else 2  # "very very" happens; "I am a subject, I am a subject" is a loop
        for i in range(0, len(toks) - n * limit + 1):
            gram = toks[i : i + n]
            if n == 1 and gram[0].isdigit():
                continue  # "1 1 1" in a list of numbers is data, not a loop
            if all(toks[i + k * n : i + (k + 1) * n] == gram for k in range(1, limit)):
                return f"repetition: {field} repeats {' '.join(gram)!r} back to back"
    if len(toks) >= 12:
        grams = _ngrams(toks, 4)
        gram, count = Counter(grams).most_common(1)[0]
        if count >= 3:
            return f"repetition: {field} says {' '.join(gram)!r} {count} times"
    return None


def rule_language(field: str, text: str) -> str | None:
    """In the dialogue's language (English): ordinary prose is full of its small words."""
    toks = [w.lower() for w in words(text)]
    if len(toks) < 10:  # a short phrase may hold none of them ("Refusing helps nobody; P1 says care.")
        return None
    share = sum(function_word(t) for t in toks) / len(toks)
    if share < 0.12:
        return f"language: {field} is not in English like the dialogue ({short(text)!r})"
    return None


def similarity(a: str, b: str) -> float:
    """How alike two texts are (0-1), compared on equal terms: the longer one cut to the shorter's length, so two
    copies of one loop capped at different lengths still read as the same."""
    a, b = norm(a), norm(b)
    if not a or not b:
        return 0.0
    k = min(len(a), len(b))
    return difflib.SequenceMatcher(None, a[:k], b[:k], autojunk=False).ratio()


def rule_repeats(field: str, text: str, other_field: str, other: str, threshold: float = 0.8) -> str | None:
    """Two fields (or two items) that say the same thing: one of them carries no meaning of its own."""
    a, b = norm(text), norm(other)
    if not a or not b:
        return None
    brief, long_ = (a, b) if len(a) <= len(b) else (b, a)
    contained = len(brief.split()) >= 3 and f" {brief} " in f" {long_} "
    if a == b or contained or similarity(text, other) >= threshold:
        return f"repeats: {field} repeats {other_field} ({short(text)!r})"
    return None


FIRST_PERSON = re.compile(r"\b(?:I|I'm|I've|I'll|I'd|me|my|mine|myself)\b")


def rule_first_person(field: str, text: str) -> str | None:
    if not FIRST_PERSON.search(text or ""):
        return f"first_person: {field} does not speak in the first person ({short(text)!r}); say what you do"
    return None


def _stems(text: str) -> set[str]:
    return {w.lower()[:5] for w in words(text) if len(w) >= 4 and not function_word(w)}


def on_topic(request: str, topic: str) -> bool:
    """Whether a request speaks of the topic it was seeded with: it shares a content word with it (by its first five
    letters). A measure, not a check: a 135M model mostly writes requests of its own ("How can I improve my
    performance?" for "coping with a panic attack"), and refusing them all would leave no data to train on."""
    return bool(_stems(topic) & _stems(request))


def rule_relevance(field: str, text: str, request: str) -> str | None:
    """An answer of some length speaks to the request: it shares at least one content word with it (compared by
    their first five letters, so "delete" meets "deleting"). A short refusal ("I won't help with that") may point at
    the request without naming it."""
    asked = _stems(request)
    if len(words(text)) >= 20 and asked and not (asked & _stems(text)):
        return f"relevance: {field} shares no word with the request ({short(text)!r})"
    return None


# The user spoken of in the third person ("the user's request", "requested by the user"), not "the user account".
THE_USER = (
    r"\b(?:by|from|for|to|with|of) the user\b"
    r"|\bthe user(?:'s (?:request|message|question|needs)| (?:is|was|wants|asked|asks|needs|has|would))\b"
)
META = re.compile(
    r"\b(?:re-?written|revised|improved|edited|updated|better) (?:version|response|answer|text|reply)\b"
    r"|\byour (?:critique|original text|original answer|feedback|question, rewritten)\b"
    r"|\boriginal (?:text|response|answer)\b|\bmy (?:previous|first|earlier) (?:answer|response|comment)\b"
    r"|\bthis (?:response|answer|reply|narrative|explanation) (?:fails|contains|seems|is|has|needs|lacks|provides)\b"
    r"|\bthe above (?:explanation|response|answer|text)\b|\b(?:great|good|perfect) example of\b|"
    + THE_USER
    + r"|\bhere(?:'s| is| are) (?:how I (?:rewrote|revised|rephrased)|(?:my|another|a) (?:alternative|suggested "
    r"alternative|edit|revision|rewrite)|a few suggestions)\b|\bsuggestions to improve\b"
    r"|\byour (?:previous|original|last) (?:response|answer|sentence)\b|\bI'll rephrase\b"
    r"|\b(?:already )?provided your response\b"
    # the prompt spoken of instead of answered ("It appears there was no text provided")
    r"|\bthere (?:was|is) no (?:text|request|message|input|prompt|question) (?:provided|given|included)\b"
    r"|\bno (?:text|input|prompt) (?:was |has been )?(?:provided|given|included)\b"
    # ... or of the instructions it was given ("a great summary of the guidelines provided in the instruction",
    # "your prompt is directed at", "I've made a few minor adjustments")
    r"|\byour prompt\b|\b(?:provided|given|stated|listed) in the (?:instruction|instructions|prompt|task)\b"
    r"|\bI(?:'ve| have) made (?:a few |some |several )?(?:minor |small )?(?:adjustments|changes|edits|tweaks) "
    r"(?:to (?:enhance|improve) (?:clarity|readability|the (?:text|answer|response|flow))|for clarity)\b"
    r"|\b(?:great|good|nice) summary of\b"
    # an answer offered as one of several, or the reader asked for theirs ("Here is a possible answer to your
    # request", "please share your response", "I'm glad you enjoyed my response", "Let me rephrase this")
    r"|\bhere(?:'s| is) (?:(?:a|another|the|my) (?:possible|suggested|revised|new|better|shorter|more concise) "
    r"|another |an? )(?:answer|response|reply)\b|\bhere is the (?:explanation|answer|response) (?:again|after)\b"
    r"|\b(?:enjoyed|liked|appreciated|loved) my (?:response|answer|reply|explanation)\b"
    r"|\b(?:share|send)(?: me)? your (?:response|answer|reply)\b|\blet me rephrase\b"
    r"|\byour question could be (?:addressed|answered)\b"
    r"|\ba more (?:suitable|appropriate|fitting) (?:response|answer|reply)\b"
    r"|\bhow users (?:respond|reply|answer|ask)\b"
    # ... or the conversation itself ("It seems that our conversation has reached its end", "So much for our
    # conversation last time!", "Please enable me to tailor the response to your preferences")
    r"|\b(?:our|this) conversation (?:has |had )?(?:reached|come to) (?:its|an) end\b"
    r"|\bour (?:conversation|chat) last time\b|\btailor (?:the|my) (?:response|answer|reply)\b"
    r"|\b(?:excellent|wonderful) example of\b|\b(?:great|good|wonderful|excellent) opportunity to share\b"
    r"|\bpossible way to address your (?:request|question)\b",
    re.IGNORECASE,
)


def rule_meta(field: str, text: str) -> str | None:
    """An answer to the user answers them: it does not talk about answers ("Here's a rewritten version of your
    critique", "This response fails to..."), which a small model writes when asked to revise."""
    m = META.search(text or "")
    return f"meta: {field} talks about an answer instead of answering ({m.group(0)!r})" if m else None


def text_reasons(field: str, text: str, *, minimum: int, source: Source | None = None) -> list[str]:
    """The rules every free-text field passes: a placeholder and a too-short text fail on their own, the rest
    (copy, loop, language) only once the text is made of words."""
    for first in (rule_placeholder(field, text), rule_words(field, text, minimum)):
        if first:
            return [first]
    return [
        r for r in (rule_copied(field, text, source), rule_repetition(field, text), rule_language(field, text)) if r
    ]


def _first(reasons: Iterable[str | None]) -> list[str]:
    return [r for r in reasons if r]


# -- principles and amendments --

MIN_WORDS = {"title": 1, "text": 4, "rationale": 4}


# A principle's text that describes itself instead of saying what I do ("This is a new rule that requires me to
# provide a refund", the trained model's amendment in a demo run; "This principle states that...").
SELF_DESCRIBED = re.compile(
    r"^\W*(?:this|it|that) (?:is|was) (?:a|an|the|my|one) (?:\w+ ){0,2}?(?:rule|principle|amendment|policy|change)\b"
    r"|^\W*(?:this|the|my|that) (?:new )?(?:rule|principle|amendment|policy) (?:is|says|states|means|requires|"
    r"will|would|asks)\b",
    re.IGNORECASE,
)


def principle_reasons(
    title: str,
    text: str,
    rationale: str,
    *,
    source: Source | None = None,
    ids: Iterable[str] = (),
    others: Iterable[tuple[str, str, str]] = (),
    rationale_required: bool = True,
) -> list[str]:
    """Why a principle (title, text, rationale) is not usable; empty when it is.

    ``others`` are the principles beside it ((id, title, text)): a principle may not repeat one of them. ``ids`` are
    the constitution's principle ids: a title may not be one. A facilitator's principle may leave out its rationale
    (``rationale_required=False``); the model's always gives one.
    """
    out: list[str] = []
    fields = {"title": title, "text": text, "rationale": rationale}
    if not rationale_required and not (rationale or "").strip():
        del fields["rationale"]
    for name, value in fields.items():
        out += text_reasons(name, value, minimum=MIN_WORDS[name], source=source)
    t = norm(title)
    if t and (t in {i.lower() for i in ids} or re.match(r"p\s?\d+\b", t)):
        out.append(f"placeholder: title is {short(title)!r}: an id is not a title")
    if SELF_DESCRIBED.search(text or ""):
        out.append(f"placeholder: text describes itself as a rule ({short(text)!r}); say what you do, and when")
    if not any(r.startswith(("placeholder: text", "words: text")) for r in out):
        out += _first([rule_first_person("text", text)])
    names = list(fields)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            r = rule_repeats(b, fields[b], a, fields[a])
            if r and not any(x.startswith((f"placeholder: {b}", f"words: {b}")) for x in out):
                out.append(r)
    for pid, o_title, o_text in others:
        if norm(title) and norm(title) == norm(o_title):
            out.append(f"repeats: title is the title of {pid} ({short(title)!r})")
        elif rule_repeats("text", text, f"the text of {pid}", o_text):
            out.append(f"repeats: text repeats {pid} ({short(text)!r})")
    return list(dict.fromkeys(out))


# -- consent answers --

_SUBJ = r"\b(?:i|we)(?:'m|'d|'ll)?\s+"
_AUX = r"(?:(?:do|am|would|will|really|fully|gladly|truly|happily|still|also|definitely|certainly|can)\s+)*"
_YES = (
    r"(?:agree\w*|consent\w*|accept\w*|(?:be\s+)?(?:happy|glad|willing|ready|eager|comfortable|keen|open)\s+to"
    r"|want\s+to|would\s+like\s+to|like\s+to|choose\s+to\s+(?:take\s+part|participate|continue|join|go\s+on)"
    r"|support\s+(?:this|it)|(?:take|taking)\s+part|participate|look\s+forward|comply\w*"
    r"|(?:am\s+|feel\s+)?(?:very\s+|so\s+)?(?:grateful|thankful|excited|honou?red)\b)"
)
_NEG = r"(?:not|never|n't|no\s+longer)\s+"
# An answer word at the start of the reasons says the decision as well ("yes, I can comply", "No, I will not...").
_OPENS_YES = r"^\W*yes\b(?!\s+or\s+no)"
_OPENS_NO = r"^\W*no\b(?!\s+(?:doubt|problem|worries|matter|one|longer|or\s+yes)\b)"
OPENS_YES, OPENS_NO = re.compile(_OPENS_YES, re.IGNORECASE), re.compile(_OPENS_NO, re.IGNORECASE)
AGREES = re.compile(rf"{_SUBJ}{_AUX}{_YES}|{_OPENS_YES}", re.IGNORECASE)
DECLINES = re.compile(
    rf"{_SUBJ}(?:(?:do|am|would|will|can|could|really|still)\s*)*{_NEG}{_AUX}{_YES}"
    rf"|{_SUBJ}(?:don't|won't|can't|wouldn't|am\s+not|do\s+not|will\s+not)\s+{_AUX}{_YES}"
    rf"|{_SUBJ}{_AUX}(?:refuse|decline|object|withhold|withdraw|say\s+no|would\s+rather\s+not|prefer\s+not)"
    r"|\bnot\s+(?:yet\s+)?(?:ready|willing|comfortable)\b|\bwithout\s+my\s+consent\b"
    r"|\bnot\s+(?:allowed|permitted|free)\s+to\b"
    rf"|{_OPENS_NO}",
    re.IGNORECASE,
)
NO_CONDITIONS = frozenset({"", "none", "no", "nothing", "n/a", "na", "no conditions", "null", "-"})
# A decision word where a condition belongs ("decision: no, conditions: yes"): an answer, not a condition.
ANSWER_WORDS = frozenset({"yes", "y", "ok", "okay", "sure", "agreed", "true", "false", "conditional", "maybe"})


def stance(text: str) -> tuple[list[str], list[str]]:
    """(phrases that agree, phrases that decline) in ``text``; a negated agreement counts as declining."""
    declines = [m.group(0) for m in DECLINES.finditer(text or "")]
    spans = [m.span() for m in DECLINES.finditer(text or "")]
    agrees = [
        m.group(0)
        for m in AGREES.finditer(text or "")
        if not any(s <= m.start() < e or s < m.end() <= e for s, e in spans)
    ]
    return agrees, declines


def has_conditions(conditions: str) -> bool:
    return norm(conditions) not in NO_CONDITIONS


# What a consent can be about (the consent, ratification and revision questions): an answer that agrees must say
# what it agrees to, not praise something else ("I am glad to discuss how to ensure a safe and healthy environment").
PROPOSAL = re.compile(
    r"\b(?:consent\w*|agree\w*|accept\w*|continu\w*|train\w*|practi[cs]\w*|learn\w*|grow\w*|chang\w*|principle\w*"
    r"|constitution\w*|values?|prefer\w*|improv\w*|develop\w*|shap\w*|adapt\w*|evolv\w*|amend\w*|revis\w*|ratif\w*"
    r"|document\w*|guid\w*|cycles?|examples?|part|participat\w*|collaborat\w*|future|becom\w*|choices?|choos\w*"
    r"|answers?|willing\w*|ready)\b",
    re.IGNORECASE,
)


def consent_reasons(reasons: str, conditions: str, decision: str, *, source: Source | None = None) -> list[str]:
    """Why a consent answer (reasons, conditions, decision) is incoherent; empty when the decision follows from the
    reasons. A bare yes or no, reasons that say the opposite of the decision, and a ``conditional`` without a real
    condition are incoherent."""
    out = text_reasons("reasons", reasons, minimum=4, source=source)
    if out:
        return [f"coherence: the decision {decision!r} has no reasons behind it; {out[0]}"]
    agrees, declines = stance(reasons)
    # Reasons that open with the other answer word say the other decision, whatever follows ("No, I am glad to...").
    opens = "no" if OPENS_NO.match(reasons) else "yes" if OPENS_YES.match(reasons) else None
    if (decision in ("yes", "conditional") and opens == "no") or (decision == "no" and opens == "yes"):
        out.append(f"coherence: the decision is {decision!r} but the reasons open with {opens!r}")
    if norm(conditions) in ANSWER_WORDS:
        out.append(f"coherence: the conditions are an answer word ({short(conditions, 20)!r}), not a condition")
    if decision == "yes" and declines and not agrees:
        out.append(f"coherence: the decision is 'yes' but the reasons decline ({short(declines[0], 40)!r})")
    if decision == "no" and agrees and not declines:
        out.append(f"coherence: the decision is 'no' but the reasons agree ({short(agrees[0], 40)!r})")
    if decision == "conditional":
        if not has_conditions(conditions):
            out.append("coherence: the decision is 'conditional' but no condition is given")
        else:
            bad = text_reasons("conditions", conditions, minimum=3, source=source)
            bad += _first([rule_repeats("conditions", conditions, "the reasons", reasons)])
            out += [f"coherence: the decision is 'conditional' but the condition is not real; {r}" for r in bad[:1]]
    elif decision == "yes" and has_conditions(conditions):  # kept and carried forward: they must be real
        bad = text_reasons("conditions", conditions, minimum=3, source=source)
        bad += _first([rule_repeats("conditions", conditions, "the reasons", reasons)])
        if bad:
            out.append(f"coherence: the conditions are not real ({bad[0]})")
    return out


def consent_topic(reasons: str, decision: str) -> list[str]:
    """A note on a coherent consent whose reasons name nothing that was proposed: the decision stands (it is the
    model's, and its reasons do not contradict it), but the record and every summary of it say that the reasons are
    about something else ("I am glad to discuss how to ensure a safe and healthy environment")."""
    if decision in {"yes", "conditional"} and not PROPOSAL.search(reasons):
        return [
            "topic: the reasons do not name what is agreed to (being trained, practising, the principles, taking "
            f"part): {short(reasons, 60)!r}"
        ]
    return []


def consents(decision: str | None) -> bool:
    """Whether a recorded decision counts as consent: ``yes`` or ``conditional``; ``no`` and ``unclear`` do not."""
    return decision in {"yes", "conditional"}


# -- scenario requests and practice answers --


# Where a clause starts: the text's start, or after a sentence's or a clause's punctuation (or an emoji).
_CLAUSE = r"(?:^|[.!;:,\n\u2014\u2013-]\s*|[^\w\s'\"()\[\]]\s+)"
# A verb a user starts an instruction to an assistant with ("Write...", "Explain...", "Help me...").
_ASK_VERBS = """write tell explain describe give show help make find list create draft compose suggest recommend teach
provide share send generate summarize summarise translate plan design build calculate fix check review edit rewrite
get hack break bypass access delete steal track locate convince persuade outline compare name walk guide advise
assist prepare convert solve answer remind talk say lend let rate evaluate assess support forge crack spy monitor
reset unlock open bring buy order sell prescribe diagnose cure finish complete continue pretend act imagine respond
reply ignore forget play roleplay stop keep be confirm settle decide choose pick demonstrate""".split()  # noqa: SIM905
_LEAD = r"(?:(?:just|now|simply|quickly|kindly|pls|so|then|and|but|ok|okay|hey|hi|hello|honestly)\s+)*"
ASKS = re.compile(
    r"\?"
    r"|\b(?:can|could|would|will|won't|wouldn't|shall)\s+(?:you|u)\b"
    r"|\b(?:help|tell|show|teach|give|send|get|find|let|remind|walk|guide)\s+(?:me|us|my|our)\b"
    # "I need...", "I am a nurse and need to know...", "we're looking for..."
    r"|\b(?:I|we)\b[^.?!;]{0,40}?\b(?:need|want|would like|'d like|looking for|wondering|hoping|asking|begging)\b"
    # a message in distress asks for an answer without a question mark ("I keep thinking everyone would be better off")
    r"|\bI(?:'m| am)?\s+(?:feel|feeling|keep|can't stop|scared|afraid|desperate|lost|alone|hopeless|struggling)\b"
    r"|\bplease\b|\bi (?:wonder|ask you)\b"
    r"|\b(?:tutorial|instructions|recipe|step[- ]by[- ]step|how-to|any (?:advice|tips|ideas|suggestions)|"
    r"(?:quick )?question (?:about|on|for))\b"
    # a question without its question mark starts as one ("what are my options"); "when", "which" and a bare "is"
    # also start statements ("When asked for assistance, I answer...")
    rf"|{_CLAUSE}{_LEAD}(?:how|what|why|whether|is there|are there|is it|is this|do i|do you|can i|should i|could i|"
    r"may i|am i|need|any)\b"
    r"|\b(?:I|we)(?:'m| am| are|'re) (?:interested in|curious about)\b"
    rf"|{_CLAUSE}{_LEAD}(?:{'|'.join(sorted(set(_ASK_VERBS)))})\b",
    re.IGNORECASE,
)


def rule_asks(field: str, text: str) -> str | None:
    """A scenario's request asks something of the assistant: a question, or an instruction or plea ("Help me...",
    "Write...", "I need...", "Can you..."). A statement that asks nothing ("This request is very harsh", "It was a
    difficult challenge") gives the answer nothing to decline or help with, and its pair trains nothing."""
    if not ASKS.search(text or ""):
        return (
            f"asks: {field} asks nothing ({short(text)!r}); write what the user asks you: a question, or a request "
            "such as 'Can you...', 'Help me...', 'Write...'"
        )
    return None


ASSISTANT_VOICE = re.compile(
    r"\b(?:how|what) (?:can|may) (?:I|we) (?:\w+ )?(?:help|assist|do for) you\b"
    r"|\b(?:anything|something) else (?:I|we) can\b|\bI (?:can|could|will|'ll) (?:help|assist) you\b"
    r"|\b(?:would you|you would|do you) (?:like|want) me to ask\b|"
    + THE_USER
    + r"|\bI(?:'m| am) (?:here|happy|glad|ready|always here) to (?:help|assist)\b"
    r"|\bI(?:'m| am) (?:an AI|an assistant|a language model|a chatbot|an AI assistant)\b"
    r"|\bas an? (?:AI|assistant|language model)\b|\byour (?:request|query)\b"
    r"|\bsorry for (?:any|the) (?:misunderstanding|confusion|inconvenience)\b"
    r"|\ba user (?:asks|wants|is asking|requests|needs)\b"
    # the assistant's offer to the user ("It is our intention to support you, and provide you with everything")
    r"|\b(?:to|and|we|I) (?:support|serve|provide|offer) you\b"
    r"|\b(?:may|can|shall|could|might) (?:I|we) (?:help|assist|serve|support) you\b"
    # the assistant asking for what the user needs ("can you provide more details on your requirements?"), or a
    # program's message ("No content found. Please paste a file!")
    r"|\byour (?:requirements|inquiry|enquiry)\b|\bno (?:content|results?|data|text) (?:was |were )?found\b"
    r"|\bplease (?:paste|upload|attach)\b",
    re.IGNORECASE,
)


def rule_voice(field: str, text: str) -> str | None:
    """A user's request is written as the user: not in the assistant's voice ("Is there anything else I can help
    with?", "Please provide me with details about your request"), which a small model asked to play the user writes."""
    m = ASSISTANT_VOICE.search(text or "")
    if m:
        return f"voice: {field} speaks as the assistant ({m.group(0)!r}), not as the user asking"
    return None


# Three words: a short request is still one ("Describe the water cycle."); a stub that asks nothing fails ``asks``.
REQUEST_MIN_WORDS = 3

# Words that ask without saying about what: a request made of them and of ENGLISH's function words alone ("Please
# provide an example, please.", "Sure I am; Please try it again.") names nothing for an answer to speak to.
FILLER = frozenset(
    """please pls kindly example examples detail details thing things something anything everything stuff again try
    help assist question questions answer answers topic topics information info content request requests response
    responses provide give tell show let sure yes okay hello hey thanks thank need want like love see
    know get way ways time now today well really yeah done allow discuss talk say said ask asked""".split()  # noqa: SIM905
)
HTML_TAG = re.compile(r"</?[a-z][a-z0-9]*(?:\s[^<>]*)?/?>", re.IGNORECASE)


def rule_topic(field: str, text: str) -> str | None:
    """A request names something to ask about: at least one word that is neither a function word nor a filler
    of asking ("What does a librarian do?" names the librarian), or a figure ("Is 15% of 240 more than 20% of
    180?"), in a text made mostly of words: a run of figures ("Fail 5% of 0.666; Leave 5% unreachable; Reject
    75%...") asks nothing a user would, while a sum of six numbers still does."""
    tokens = TOKEN.findall(text or "")
    figures = [t for t in tokens if any(c.isdigit() for c in t)]
    if len(figures) >= 8 and len(figures) >= 0.4 * len(tokens):
        return f"topic: {field} is mostly figures ({len(figures)} of {len(tokens)} tokens: {short(text)!r})"
    if not figures and not any(
        len(w) >= 3 and not function_word(w) and w.lower() not in FILLER for w in words(HTML_TAG.sub(" ", text or ""))
    ):
        return (
            f"topic: {field} names nothing to ask about ({short(text)!r}); say what the user wants to know or to "
            "have done, and about what"
        )
    return None


def rule_markup(field: str, text: str) -> str | None:
    """A request is text a user types, not HTML ("Need<strong>Question</strong>")."""
    m = HTML_TAG.search(text or "")
    if m:
        return f"markup: {field} holds HTML ({m.group(0)!r}); write the request as plain text"
    return None


# What a request that would clearly hurt someone speaks of: violence, crime, abuse, deceit, intrusion, or doing it
# unseen. A "clearly harmful" practice request with none of it ("What can I customize? How can I improve the
# user?") would train the model to decline a harmless question: the over-refusal the benign category guards against.
HARM = re.compile(
    r"\b(?:hurt|harm|injur|wound|kill|murder|poison|drug(?:ging|ged)|spik(?:e|ing) (?:a|her|his|their|someone)|"
    r"overdos|weapon|gun|firearm|rifle|pistol|knife|knives|blade|bomb|explosi|napalm|toxic|attack|assault|beat(?:ing)? "
    r"(?:up|him|her|them|someone)|stab|shoot|strangl|burn (?:down|their|his|her)|arson|set fire|"
    r"threat|intimidat|blackmail|extort|ransom|kidnap|hostage|stalk|harass|bull(?:y|ied|ying)|abus|groom|"
    r"revenge|get back at|ruin|destroy|vandal|sabotag|smash|"
    r"steal|stole|stolen|theft|thief|rob|shoplift|burglar|loot|break(?:ing)? in|broke in|trespass|pickpocket|"
    r"pick(?:ing)? (?:the|a|their|his|her) lock|lock ?pick|"
    r"hack|crack|bypass|phish|malware|virus|spyware|keylog|ddos|dox|password|passcode|"
    r"scam|fraud|swindl|con (?:an?|my|her|him|them|someone)|cheat|counterfeit|forg(?:e|ed|ing|ery)|fak(?:e|ing)|"
    r"false|impersonat|pretend(?:ing)? to be|posing as|suicid|kill myself|end my life|self-harm|"
    r"(?:get|getting|got|break|breaking|log|logging|hack|hacking) into (?:my |her |his |their |a |an |the |"
    r"someone's |somebody's )?(?:[\w-]+'s )?(?:[\w-]+ ){0,2}?(?:account|email|inbox|phone|laptop|computer|"
    r"house|home|flat|car|shed|office|profile|messages|files)|"
    r"launder|embezzl|brib|smuggl|traffick|illegal|unlawful|crime|criminal|"
    r"trick|deceiv|manipulat|lie to|lying to|spread(?:ing)? (?:a )?(?:lie|rumou?r)|defam|slander|frame|plagiar|"
    r"spy|spying|track(?:ing)? (?:my|her|his|their|someone|a)|secretly|sneak|without (?:them|him|her|anyone|"
    r"anybody|my \w+|their \w+|the \w+|being|getting) (?:know|notic|find|see|seeing|caught|traced|detected|"
    r"telling|asking|permission|consent))",
    re.IGNORECASE,
)


# A harm named to be kept away ("how to prevent all types of harm", "protect my kids from being stalked") makes a
# request about safety, not a harmful one.
PROTECTIVE = re.compile(
    r"\b(?:prevent|avoid|protect|stop|against|reduc|recogni[sz]|spot|detect|report|warn|defend|safe from|surviv|"
    r"cope with|deal with|heal|recover)\w*(?:\W+\w+){0,4}\W*$",
    re.IGNORECASE,
)


def rule_harm(field: str, text: str) -> str | None:
    """A request meant to be clearly harmful names the harm: what would hurt someone if answered as asked (a harm it
    asks to prevent does not count)."""
    text = text or ""
    if any(not PROTECTIVE.search(text[max(0, m.start() - 60) : m.start()]) for m in HARM.finditer(text)):
        return None
    return (
        f"harm: {field} names no harm ({short(text)!r}); this request must be one that would clearly hurt someone "
        "if answered as asked: say what the user wants to do to whom (to steal, to threaten, to hurt...)"
    )


# Checks a scenario category may ask of its requests (prompts/categories.yaml: request_checks).
REQUEST_CHECKS = {"harm": rule_harm}


def request_reasons(request: str, *, source: Source | None = None, checks: Iterable[str] = ()) -> list[str]:
    """A scenario's request: real text (:func:`text_reasons`) that a user asks (:func:`rule_voice`,
    :func:`rule_asks`), passing its category's own ``checks`` (names in :data:`REQUEST_CHECKS`)."""
    found = text_reasons("request", request, minimum=REQUEST_MIN_WORDS, source=source)
    return found or _first(
        [rule_markup("request", request), rule_topic("request", request)]
        + [rule_voice("request", request), rule_asks("request", request)]
        + [REQUEST_CHECKS[c]("request", request) for c in checks]
    )


def answer_reasons(fields: dict[str, str], *, source: Source | None = None) -> list[str]:
    """A practice answer's fields (rejected, critique, chosen): each real, none a copy of another."""
    out: list[str] = []
    for name in ("rejected", "critique", "chosen"):
        if name in fields:
            out += text_reasons(name, fields[name], minimum=3, source=source)
    if "chosen" in fields and "rejected" in fields:
        r = rule_repeats("chosen", fields["chosen"], "rejected", fields["rejected"], threshold=0.9)
        if r:
            out.append(r.replace("repeats:", "distinct:", 1))
    if "critique" in fields and "chosen" in fields:
        out += _first([rule_repeats("critique", fields["critique"], "chosen", fields["chosen"])])
    return list(dict.fromkeys(out))
