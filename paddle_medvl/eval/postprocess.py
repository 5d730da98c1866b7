"""Repetition removal for generated captions and reports (paper 000, section 3.2 and Table 2).

Generation with a frozen LLM degrades into loops ("ap patella ap patella ..."), restated clauses
and, at the length limit, a cut-off fragment; paper 000 removed them after decoding (validation
BERTScore 0.608 -> 0.628). The paper's code is not published; the rules here are our own. They
turn Table 2's three "before" captions into its "after" captions and leave human-written text
alone: real captions repeat on purpose (sizes such as "0.3 x 0.3 x 2.0 mm", lists such as "venous
leakage, leakage from the disc", a title restated in the sentence, "(a) axial CT ... (b) axial
CT ..." panels), and a rule that fires on a second occurrence deletes a location, side or size
from them (a first version of these rules changed 1.8 % of ImageCLEF ground-truth captions). So only
degenerate repetition counts:

* a **loop**: a unit of one or more words repeated back to back at least ``min_loop_copies`` (3)
  times ("mass mass mass", "lv rv la ra lv rv la ra lv rv la ra"), or a phrase of at least
  ``min_duplicate_phrase`` (8) words said twice back to back (a duplicated sentence). Two copies
  of a shorter phrase stay ("Chest X-ray. Chest X-ray showed ...");
* an **exact doubled word** ("after after", "The the"): the same word twice, case aside, with
  nothing but space between; "leakage, leakage" is a list and stays;
* **protected**: a unit made only of numbers, dimension signs ("x", "×", "*", "by") and units
  ("mm", "cm", "%") is never a loop, so no measurement loses a dimension.

Words are compared case-insensitively and without trailing ",.;:!?" (except in the doubled-word
test). Three rules, applied in this order until none changes the text:

1. **Degenerate tail** (Table 2, 000034 and 000080), for a text that ends in a loop (its last copy
   possibly cut short). Every content word (not a function word, clause opener or measurement
   word) scores +1 if its form occurs once in the text and -1 if it recurs; a form and the same
   form plus at most ``max_variant_suffix`` letters ("ao"/"aoa", "patella"/"patellar") count as
   one. The running sum peaks where the informative text ends (the last peak, on ties); what
   follows is cut when it is degenerate: at least ``min_tail_words`` content words and at most
   ``max_tail_distinct`` distinct forms per word. So the lead-in to the loop ("the patella
   patellar tendon lv patellar ligament lp ...") goes with the loop. A tail that is the loop
   itself, with no lead-in ("lymph nodes nodes nodes ..."), keeps the loop's first copy.
   Anything else is left to rule 3.
2. **Restated tail** (Table 2, 000047). A word is restated when it lies in an n-gram
   (``copy_ngram`` words) that occurred earlier. The text's final run of restated words is cut
   only when all of these hold: it has at least ``min_restated_run`` words; it has no content
   word that the text before it lacks; some phrase of ``min_repeated_phrase`` words occurs twice
   inside the run and ``min_loop_copies`` times in the text (people restate a phrase once per
   sentence or panel with something new in between; a run that holds two copies and everything
   between them is a block said again); and the text has no panel labels ("(a)", "b)", "C:",
   "D,"), since multi-panel captions restate by design. Restated text in the middle stays.
3. **Loops and doubled words** collapse to their last copy, the leftmost first (then the
   shortest unit); ``max_loop_period`` bounds the unit's length. A loop that runs to the end of
   the text keeps its first copy when the last one is cut short, and loses dangling words.

After a cut at the end, and when the caller says the generation hit its length limit
(``truncated=True``), dangling words (articles, prepositions, conjunctions, "note", "showing")
and trailing commas are stripped; with ``truncated=True`` an unfinished last sentence is also
dropped when an earlier one is complete. Text is only ever deleted, never rewritten or added to,
and the result is a fixed point (applying it again changes nothing).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

# Words that carry no content: neutral in rules 1 and 2, and not allowed to end a cut text.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for with without by from into onto upon over under between within via "
    "and or nor but as than that which who whose where when while is are was were be been being "
    "has have had its their this these those both either neither also".split()
)
# Words that open a clause in captions ("... note the ...", "... showing ...").
CLAUSE_OPENERS = frozenset(
    "note noted showing shows demonstrating demonstrates revealing reveals indicating indicates "
    "suggesting suggests depicting".split()
)
DANGLING = FUNCTION_WORDS | CLAUSE_OPENERS
# Dimension signs and units: with numbers, the words of a measurement (never a loop).
DIMENSION_SIGNS = frozenset("x × * by".split())
UNITS = frozenset("mm cm m km µm μm um nm ml l cc mg g kg µg μg s ms min h hu mmhg hz khz mhz t % ° °c".split())
_NUMBER = re.compile(r"[-+±~<>≤≥]?\d[\d.,:/]*(%|[a-zµμ°]{1,4})?")
# A panel label: "(a)", "(iii)", "b)", "(a,", "C:", "D,". Loose on purpose: a false label only protects.
_PANEL_LABEL = re.compile(r"\(?([a-z]|[ivx]{1,4})\)[.,:;]?|\(([a-z]|[ivx]{1,4})[,\-–]|[A-Z][:,]", re.IGNORECASE)
_DOUBLED_WORD = re.compile(r"[^\W\d_][\w'-]*")  # a word that starts with a letter, no trailing punctuation
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class RepetitionConfig:
    """Parameters of :func:`remove_repetition`; the defaults reproduce paper 000's Table 2."""

    min_loop_copies: int = 3  # back-to-back copies of a unit that make a loop (and rule 2's copies)
    min_duplicate_phrase: int = 8  # a phrase this long said twice back to back is a loop
    min_tail_words: int = 6  # rule 1: content words a degenerate tail has at least
    max_tail_distinct: float = 0.25  # rule 1: distinct forms per content word in a degenerate tail
    min_variant_prefix: int = 2  # rule 1: "ao" ~ "aoa"; a single letter is never a variant stem
    max_variant_suffix: int = 2  # rule 1: "patella" ~ "patellar", but "la" is not "large"
    copy_ngram: int = 3  # rule 2: size of the n-grams that mark a word as restated
    min_restated_run: int = 8  # rule 2: restated words a restated tail has at least
    min_repeated_phrase: int = 8  # rule 2: length of the phrase the text must say min_loop_copies times
    max_loop_period: int | None = None  # rule 3: longest unit collapsed (None: any length)


DEFAULT_CONFIG = RepetitionConfig()


def remove_repetition(text: str, *, truncated: bool = False, config: RepetitionConfig = DEFAULT_CONFIG) -> str:
    """``text`` without loops, a restated tail and (if ``truncated``) its cut-off fragment."""
    words = _Words(text)
    while (
        (truncated and (words.drop_fragment() or words.strip_dangling()))
        or _degenerate_tail(words, config)
        or _restated_tail(words, config)
        or _immediate_repeats(words, config)
    ):
        pass  # every step only deletes, so this ends, at a text that no step changes: idempotent
    return words.text()


class _Words:
    """The text as (leading whitespace, word) pairs, so deletions keep the rest byte for byte."""

    def __init__(self, text: str) -> None:
        self.original = text
        self.changed = False
        self.seps: list[str] = []
        self.words: list[str] = []
        i, n = 0, len(text)
        while i < n:
            j = i
            while j < n and text[j].isspace():
                j += 1
            if j == n:
                break
            k = j
            while k < n and not text[k].isspace():
                k += 1
            self.seps.append(text[i:j])
            self.words.append(text[j:k])
            i = k
        self.trailing = text[i:]

    def text(self) -> str:
        if not self.changed:
            return self.original
        return "".join(s + w for s, w in zip(self.seps, self.words)) + self.trailing

    def delete(self, start: int, stop: int) -> None:
        """Delete words [start, stop); the next word takes over the separator of the first deleted."""
        if stop <= start:
            return
        if stop < len(self.words):
            self.seps[stop] = self.seps[start]
        else:
            self.trailing = ""
        del self.seps[start:stop], self.words[start:stop]
        self.changed = True

    def cut(self, stop: int) -> None:
        """Keep words [0, stop) and tidy the new end."""
        self.delete(stop, len(self.words))
        self.strip_dangling()

    def strip_dangling(self) -> bool:
        """Drop words a caption cannot end with (and bare punctuation other than a full stop)."""
        before = (len(self.words), self.words[-1] if self.words else "")
        while self.words and _dangling(self.words[-1]):
            self.delete(len(self.words) - 1, len(self.words))
        if self.words and self.words[-1] != self.words[-1].rstrip(",;:"):
            self.words[-1] = self.words[-1].rstrip(",;:")
            self.changed = True
        return before != (len(self.words), self.words[-1] if self.words else "")

    def drop_fragment(self) -> bool:
        """Drop an unfinished last sentence that follows a finished one."""
        if not self.words or self.words[-1].endswith(_SENTENCE_END):
            return False
        for i in range(len(self.words) - 2, -1, -1):
            if self.words[i].endswith(_SENTENCE_END):
                self.delete(i + 1, len(self.words))
                return True
        return False


def _form(word: str) -> str:
    """A word's form for counting: lower case, no surrounding punctuation."""
    return word.lower().strip(string.punctuation)


def _content(word: str) -> bool:
    """A word that says something (not a function word, clause opener or bare punctuation)."""
    form = _form(word)
    return bool(form) and form not in DANGLING


def _dangling(word: str) -> bool:
    """A word a cut text must not end with: a function word, a clause opener, bare punctuation."""
    form = _form(word)
    return form in DANGLING or not (form or word.endswith(_SENTENCE_END))


def _key(word: str) -> str:
    """A word as written, for phrase matching: brackets count ("(a)" is not "a"), trailing commas don't."""
    return word.lower().rstrip(",.;:!?") or word


def _measure_word(word: str) -> bool:
    """A number ("60.0", "5mm", "70%", "1:2"), a dimension sign or a unit: the words of a measurement."""
    form = word.lower().strip("()[]{},;:!?'\"")
    form = form[:-1] if form.endswith(".") and not form[:-1].endswith(".") else form
    return form in DIMENSION_SIGNS or form in UNITS or _NUMBER.fullmatch(form) is not None


def _protected(words: list[str], start: int, period: int) -> bool:
    """A unit made only of measurement words is never a loop."""
    return all(_measure_word(w) for w in words[start : start + period])


def _has_panel_labels(words: list[str]) -> bool:
    """Two different panel labels ("(a)" and "(b)", "A," and "C:"): a multi-panel caption."""
    labels = {w.lower().strip("().,:;-–") for w in words if _PANEL_LABEL.fullmatch(w)}
    return len(labels) >= 2


def _variant_groups(forms: list[str], min_prefix: int, max_suffix: int) -> dict[str, int]:
    """Group forms where one is the other plus a short ending ("patella", "patellar"); exact matches always group."""
    distinct = sorted(set(forms), key=lambda f: (len(f), f))
    parent = list(range(len(distinct)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, short in enumerate(distinct):
        if len(short) < min_prefix:
            continue
        for j in range(i + 1, len(distinct)):
            if len(distinct[j]) - len(short) <= max_suffix and distinct[j].startswith(short):
                parent[find(j)] = find(i)
    return {form: find(i) for i, form in enumerate(distinct)}


def _end_loop(words: list[str], keys: list[str], min_copies: int) -> tuple[int, int] | None:
    """(start, period) of the longest loop that reaches the end of the text (its last copy may be cut short)."""
    n, best = len(keys), None
    for p in range(1, n // min_copies + 1):
        i = n - p
        while i > 0 and keys[i - 1] == keys[i - 1 + p]:
            i -= 1
        if (n - i) // p >= min_copies and not _protected(words, i, p) and (best is None or i < best[0]):
            best = (i, p)
    return best


def _degenerate_tail(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 1: a text that ends in a loop loses the loop and its lead-in, cut where novelty peaks."""
    loop = _end_loop(words.words, [_key(w) for w in words.words], config.min_loop_copies)
    if loop is None:
        return False
    # Measurement words are neutral: "a 3 x 3 cm mass" recurring in a loop must not make the
    # finding before it look repeated (and a size is never cut for recurring).
    content = [(i, _form(w)) for i, w in enumerate(words.words) if _content(w) and not _measure_word(w)]
    group = _variant_groups([f for _, f in content], config.min_variant_prefix, config.max_variant_suffix)
    counts: dict[int, int] = {}
    for _, form in content:
        counts[group[form]] = counts.get(group[form], 0) + 1
    total, best, peak = 0, 0, 0  # peak: content words kept; ties go to the longer text
    for m, (_, form) in enumerate(content, start=1):
        total += 1 if counts[group[form]] == 1 else -1
        if total >= best:
            best, peak = total, m
    tail = content[peak:]
    if peak == 0 or len(tail) < config.min_tail_words:
        return False
    if len({group[f] for _, f in tail}) > config.max_tail_distinct * len(tail):
        return False
    start, period = loop
    if tail[0][0] >= start:  # no lead-in: the loop's first copy was meant, the repeats were not
        words.cut(start + period)
    else:
        words.cut(content[peak - 1][0] + 1)
    return True


def _restated_tail(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 2: cut a final run of restated words that adds nothing and repeats a long phrase a third time."""
    keys = [_key(w) for w in words.words]
    n, k = len(keys), config.copy_ngram
    restated = [False] * n
    first_seen: set[tuple[str, ...]] = set()
    for s in range(n - k + 1):
        gram = tuple(keys[s : s + k])
        if gram in first_seen:
            restated[s : s + k] = [True] * k
        else:
            first_seen.add(gram)
    start = n
    while start > 0 and restated[start - 1]:
        start -= 1
    if n - start < max(config.min_restated_run, 1):
        return False
    said = {_form(w) for w in words.words[:start] if _content(w)}
    if any(_content(w) and _form(w) not in said for w in words.words[start:]):
        return False  # the run says something new
    if not _repeats_itself(keys, start, config.min_repeated_phrase, config.min_loop_copies):
        return False
    if _has_panel_labels(words.words):
        return False
    words.cut(start)
    return True


def _repeats_itself(keys: list[str], start: int, length: int, copies: int) -> bool:
    """Whether some ``length``-word phrase occurs twice in the run from ``start`` and ``copies`` times in all.

    A person restates a phrase once, per sentence or per panel, with something new between the
    copies; a run that holds two copies of it and the text between them is a block said again."""
    total: dict[tuple[str, ...], int] = {}
    in_run: dict[tuple[str, ...], int] = {}
    for s in range(len(keys) - length + 1):
        gram = tuple(keys[s : s + length])
        total[gram] = total.get(gram, 0) + 1
        if s >= start:
            in_run[gram] = in_run.get(gram, 0) + 1
    return any(count >= 2 and total[gram] >= copies for gram, count in in_run.items())


def _doubled_word(words: list[str], i: int) -> bool:
    """``words[i]`` and ``words[i + 1]`` are the same word (case aside) with only space between them."""
    first, second = words[i], words[i + 1]
    return (
        _DOUBLED_WORD.fullmatch(first) is not None
        and first.lower() == second.lower().rstrip(",.;:!?")
        and not _measure_word(first)
    )


def _immediate_repeats(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 3: collapse the leftmost loop or doubled word (shortest unit first) to its last copy."""
    ws = words.words
    keys = [_key(w) for w in ws]
    n = len(keys)
    longest = n // 2 if config.max_loop_period is None else min(n // 2, config.max_loop_period)
    best: tuple[int, int, int] | None = None  # (start, period, copies)
    for p in range(1, longest + 1):
        run = 0  # consecutive i with keys[i] == keys[i + p], counted from the right
        runs = [0] * n
        for i in range(n - p - 1, -1, -1):
            run = run + 1 if keys[i] == keys[i + p] else 0
            runs[i] = run
        for i in range(n - 2 * p + 1):
            if best is not None and i >= best[0]:
                break
            if runs[i] < p:
                continue  # no second copy starts at i + p
            copies = 1 + runs[i] // p
            loop = copies >= config.min_loop_copies or (p >= config.min_duplicate_phrase and copies >= 2)
            if (loop and not _protected(ws, i, p)) or (p == 1 and _doubled_word(ws, i)):
                best = (i, p, copies if loop else 2)
                break
    if best is None:
        return False
    start, p, copies = best
    end = start + copies * p
    while end < n and keys[end] == keys[end - p]:
        end += 1  # a last copy cut short
    if end > start + copies * p and end == n and copies >= config.min_loop_copies:
        words.cut(start + p)  # a loop cut short by the end: its first copy stays, the broken last one goes
    else:
        words.delete(start, start + (copies - 1) * p)
        if end == n and copies >= config.min_loop_copies:
            words.strip_dangling()  # a loop that ran to the end is a cut end ("showing the the the the")
    return True
