"""Repetition removal for generated captions and reports (paper 000, section 3.2 and Table 2).

Generation with a frozen LLM degrades into loops ("ap patella ap patella ..."), restated clauses
and, at the length limit, a cut-off fragment; paper 000 removed them after decoding (validation
BERTScore 0.608 -> 0.628). The paper's code is not published; the rules here are our own, chosen so
that Table 2's three "before" captions become its "after" captions, and so that ordinary captions
pass through untouched. Three rules, applied in this order until none changes the text:

1. **Degenerate tail** (Table 2, 000034 and 000080), for a text that ends in a loop
   (``min_loop_copies`` back-to-back copies of a phrase, the last one possibly cut short). Every
   content word (not a function word or clause opener) scores +1 if its form occurs once in the
   text and -1 if it recurs; forms that begin with one another ("ao"/"aoa", "patella"/"patellar")
   count as one. The running sum peaks where the informative text ends (the last peak, on ties);
   what follows is cut when it is degenerate: at least ``min_tail_words`` content words and at most
   ``max_tail_distinct`` distinct forms per word (each form used about 4 times or more). So the
   lead-in to the loop ("the patella patellar tendon lv patellar ligament lp ...") goes with the
   loop. A tail that is the loop itself, with no lead-in ("lymph nodes nodes nodes ..."), keeps the
   loop's first copy. A text that is a loop from its first word, or whose tail is short or varied,
   is left to rule 3.
2. **Restated runs** (Table 2, 000047). A word is restated when it lies in an n-gram
   (``copy_ngram`` words) that already occurred earlier; a run of at least ``min_restated_run``
   restated words says nothing new and is deleted (short echoes such as "the distal end of the"
   inside one sentence are kept).
3. **Immediate repeats**: a word or phrase of any length (up to ``max_loop_period``) repeated back
   to back ("mass mass mass", "ap patella ap patella") keeps its last copy.

After a cut at the end, and when the caller says the generation hit its length limit
(``truncated=True``), dangling words (articles, prepositions, conjunctions, "note", "showing")
and trailing commas are stripped; with ``truncated=True`` an unfinished last sentence is also
dropped when an earlier one is complete. Text is only ever deleted, never rewritten or added to,
and the result is a fixed point (applying it again changes nothing).
"""
from __future__ import annotations

import string
from dataclasses import dataclass

# Words that carry no content: neutral in rule 1, and not allowed to end a cut text.
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
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class RepetitionConfig:
    """Parameters of :func:`remove_repetition`; the defaults reproduce paper 000's Table 2."""

    min_loop_copies: int = 3  # rule 1: back-to-back copies of a phrase at the end that make a loop
    min_tail_words: int = 6  # rule 1: content words a degenerate tail has at least
    max_tail_distinct: float = 0.25  # rule 1: distinct forms per content word in a degenerate tail
    min_variant_prefix: int = 2  # rule 1: "ao" ~ "aoa"; a single letter is never a variant stem
    copy_ngram: int = 3  # rule 2: size of the n-grams that mark a word as restated
    min_restated_run: int = 8  # rule 2: restated words in a row that are deleted
    max_loop_period: int | None = None  # rule 3: longest phrase collapsed (None: any length)


DEFAULT_CONFIG = RepetitionConfig()


def remove_repetition(text: str, *, truncated: bool = False, config: RepetitionConfig = DEFAULT_CONFIG) -> str:
    """``text`` without loops, restated runs and (if ``truncated``) its cut-off fragment."""
    words = _Words(text)
    while (
        (truncated and (words.drop_fragment() or words.strip_dangling()))
        or _degenerate_tail(words, config)
        or _restated_runs(words, config)
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


def _dangling(word: str) -> bool:
    """A word a cut text must not end with: a function word, a clause opener, bare punctuation."""
    form = _form(word)
    return form in DANGLING or not (form or word.endswith(_SENTENCE_END))


def _key(word: str) -> str:
    """A word as written, for phrase matching: brackets count ("(a)" is not "a"), trailing commas don't."""
    return word.lower().rstrip(",.;:!?") or word


def _variant_groups(forms: list[str], min_prefix: int) -> dict[str, int]:
    """Group forms where one begins with the other ("patella", "patellar"); exact matches always group."""
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
            if distinct[j].startswith(short):
                parent[find(j)] = find(i)
    return {form: find(i) for i, form in enumerate(distinct)}


def _end_loop(keys: list[str], min_copies: int) -> tuple[int, int] | None:
    """(start, period) of the longest run of back-to-back copies that reaches the end of the text."""
    n, best = len(keys), None
    for p in range(1, n // min_copies + 1):
        i = n - p
        while i > 0 and keys[i - 1] == keys[i - 1 + p]:
            i -= 1
        if (n - i) // p >= min_copies and (best is None or i < best[0]):
            best = (i, p)
    return best


def _degenerate_tail(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 1: a text that ends in a loop loses the loop and its lead-in, cut where novelty peaks."""
    loop = _end_loop([_key(w) for w in words.words], config.min_loop_copies)
    if loop is None:
        return False
    content = [(i, _form(w)) for i, w in enumerate(words.words) if _form(w) and _form(w) not in DANGLING]
    group = _variant_groups([f for _, f in content], config.min_variant_prefix)
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


def _restated_runs(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 2: delete runs of words that only repeat n-grams said before."""
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
    runs, start = [], None
    for i, flag in enumerate(restated + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start >= config.min_restated_run:
                runs.append((start, i))
            start = None
    if not runs:
        return False
    for start, stop in reversed(runs):
        if stop == len(words.words):
            words.cut(start)
        else:
            words.delete(start, stop)
    return True


def _immediate_repeats(words: _Words, config: RepetitionConfig) -> bool:
    """Rule 3: collapse the leftmost back-to-back repeat of a phrase (shortest period first)."""
    keys = [_key(w) for w in words.words]
    n = len(keys)
    longest = n // 2 if config.max_loop_period is None else min(n // 2, config.max_loop_period)
    best: tuple[int, int] | None = None  # (start, period)
    for p in range(1, longest + 1):
        run = 0  # consecutive i with keys[i] == keys[i + p], counted from the right
        for i in range(n - p - 1, -1, -1):
            run = run + 1 if keys[i] == keys[i + p] else 0
            if run >= p and (best is None or i < best[0]):
                best = (i, p)
    if best is None:
        return False
    start, p = best
    copies = 1
    while keys[start + copies * p : start + (copies + 1) * p] == keys[start : start + p]:
        copies += 1
    words.delete(start, start + (copies - 1) * p)
    return True
