"""Greedy and beam search over any step-wise scorer, with Hugging Face's semantics.

A *stepper* has three methods (the frozen LLMs of ``language/`` and the Q-Former's text decoder
of ``blip2.py`` are steppers):

    _prefill(inputs [B, L, D], mask [B, L]) -> (next-token logits [B, V], state)
    _step(tokens [N], state) -> (next-token logits [N, V], state)
    _reorder(state, rows [N]) -> state          # keep these rows (beam search)
    start_tokens(B) -> [B, S]                    # optional: what the output begins with (T5's decoder
                                                 # start), seen by the processors, not returned

``generate(stepper, inputs, mask, **DecodeConfig fields, eos_token_id, pad_token_id)`` gives the
new tokens [B, T]; ``language/base.py``'s module docstring states the semantics (checked against
transformers 5.23).
"""
from __future__ import annotations

import math
from typing import Any

import paddle
from paddle import Tensor

from ..config import ConfigError
from ..workarounds import log_softmax

_NEG = -1.0e9  # HF's "never" score for unused beams


@paddle.no_grad()
def generate(
    stepper: Any,
    inputs: Tensor,
    mask: Tensor,
    *,
    num_beams: int,
    max_new_tokens: int,
    min_new_tokens: int,
    repetition_penalty: float,
    no_repeat_ngram_size: int,
    length_penalty: float,
    eos_token_id: int,
    pad_token_id: int,
) -> Tensor:
    """New token ids [B, T] (int64), T <= max_new_tokens, EOS included, rows that ended early padded."""
    check_decoding(num_beams, max_new_tokens, min_new_tokens, repetition_penalty, no_repeat_ngram_size)
    rules = Processors(eos_token_id, min_new_tokens, repetition_penalty, no_repeat_ngram_size)
    if num_beams == 1:
        return greedy(stepper, inputs, mask, max_new_tokens, rules, eos_token_id, pad_token_id)
    return beam_search(stepper, inputs, mask, num_beams, max_new_tokens, length_penalty, rules, eos_token_id, pad_token_id)


def start_tokens(stepper: Any, batch: int) -> Tensor:
    """What the output begins with before anything is generated [B, S]: the stepper's ``start_tokens``
    (an encoder-decoder's decoder start) or nothing. The processors see them, as HF's see the decoder's
    input ids; they are not returned."""
    if hasattr(stepper, "start_tokens"):
        return stepper.start_tokens(batch).astype("int64")
    return paddle.zeros([batch, 0], dtype="int64")


def greedy(stepper: Any, embeds: Tensor, mask: Tensor, max_new: int, rules: "Processors", eos: int, pad: int) -> Tensor:
    logits, state = stepper._prefill(embeds, mask)
    batch = embeds.shape[0]
    out = start_tokens(stepper, batch)
    begin = out.shape[1]
    running = paddle.ones([batch], dtype="bool")
    for step in range(max_new):
        scores = rules(logits.astype("float32"), out, step)
        token = paddle.argmax(scores, axis=-1).astype("int64")
        token = paddle.where(running, token, paddle.full_like(token, pad))
        out = paddle.concat([out, token.unsqueeze(-1)], axis=1)
        running = paddle.logical_and(running, token != eos)
        if step + 1 == max_new or not bool(running.any()):
            break
        logits, state = stepper._step(token, state)
    return out[:, begin:]


def beam_search(
    stepper: Any, embeds: Tensor, mask: Tensor, beams: int, max_new: int, length_penalty: float,
    rules: "Processors", eos: int, pad: int,
) -> Tensor:
    """transformers 5.x ``_beam_search`` (vectorised; ``early_stopping=False``) for an embedded prompt."""
    batch, keep = embeds.shape[0], 2 * beams  # 2 * beams candidates: at least `beams` of them go on
    rows = paddle.arange(batch, dtype="int64").repeat_interleave(beams)
    logits, state = stepper._prefill(embeds, mask)  # once per prompt, then copied to its beams
    logits, state = paddle.gather(logits, rows), stepper._reorder(state, rows)
    vocab = logits.shape[-1]
    start = start_tokens(stepper, batch)
    begin, width = start.shape[1], start.shape[1] + max_new  # each sequence: the start tokens, then new ones
    positions = paddle.arange(width, dtype="int64")
    offsets = (paddle.arange(batch, dtype="int64") * beams).unsqueeze(-1)
    top_beams = paddle.arange(keep) < beams  # only these candidates may finish in a step

    running = paddle.full([batch, beams, width], pad, dtype="int64")
    if begin:
        running[:, :, :begin] = start.unsqueeze(1).expand([batch, beams, begin])
    running_scores = paddle.concat(
        [paddle.zeros([batch, 1]), paddle.full([batch, beams - 1], _NEG)], axis=1
    )  # all beams start equal: only the first may expand at step 0
    done = running.clone()  # the best finished hypotheses
    done_scores = paddle.full([batch, beams], _NEG)
    done_lengths = paddle.zeros([batch, beams], dtype="int64")
    done_full = paddle.zeros([batch, beams], dtype="int64")  # 1 where a kept hypothesis is real (no bool gather on CPU)
    improvable = paddle.ones([batch, 1], dtype="bool")

    for step in range(max_new):
        history = running.reshape([batch * beams, width])[:, : begin + step]
        scores = rules(log_softmax(logits.astype("float32"), axis=-1), history, step)
        scores = (scores.reshape([batch, beams, vocab]) + running_scores.unsqueeze(-1)).reshape([batch, -1])
        cand_scores, cand = paddle.topk(scores, keep, axis=1)
        cand_beam, cand_token = cand // vocab, cand % vocab
        cand_seqs = paddle.take_along_axis(running, cand_beam.unsqueeze(-1).expand([batch, keep, width]), 1)
        cand_seqs = paddle.where(positions == begin + step, cand_token.unsqueeze(-1), cand_seqs)
        ends = paddle.logical_or(cand_token == eos, paddle.full_like(cand_token, step + 1 >= max_new, dtype="bool"))

        # the best `beams` unfinished candidates go on
        alive_scores = paddle.where(ends, cand_scores + _NEG, cand_scores)
        next_scores, pick = paddle.topk(alive_scores, beams, axis=1)
        running = paddle.take_along_axis(cand_seqs, pick.unsqueeze(-1).expand([batch, beams, width]), 1)
        running_scores = next_scores
        parents = (paddle.take_along_axis(cand_beam, pick, 1) + offsets).flatten()

        # finished candidates among the top `beams` join the kept hypotheses if they score higher
        finished_now = paddle.logical_and(ends, top_beams.unsqueeze(0))
        final = cand_scores / float(step + 1) ** length_penalty
        # anything else sinks below the placeholders (_NEG) so that it is never kept
        final = paddle.where(paddle.logical_and(finished_now, improvable), final, final + _NEG * 3)
        merged_scores = paddle.concat([done_scores, final], axis=1)
        best = paddle.topk(merged_scores, beams, axis=1)[1]
        done_scores = paddle.take_along_axis(merged_scores, best, 1)
        merged = paddle.concat([done, cand_seqs], axis=1)
        done = paddle.take_along_axis(merged, best.unsqueeze(-1).expand([batch, beams, width]), 1)
        lengths = paddle.concat([done_lengths, paddle.full([batch, keep], step + 1, dtype="int64")], axis=1)
        done_lengths = paddle.take_along_axis(lengths, best, 1)
        done_full = paddle.take_along_axis(paddle.concat([done_full, finished_now.astype("int64")], axis=1), best, 1)

        # can a running beam still beat the worst kept hypothesis? (HF's heuristic: current length)
        bound = running_scores[:, :1] / float(step + 1) ** length_penalty
        worst = paddle.where(done_full > 0, done_scores.min(axis=1, keepdim=True).expand([batch, beams]),
                             paddle.full([batch, beams], _NEG))
        improvable = paddle.logical_and(improvable, (bound > worst).any(axis=1, keepdim=True))
        if step + 1 == max_new or not bool(improvable.any()):
            break
        state = stepper._reorder(state, parents)
        logits, state = stepper._step(running[:, :, begin + step].flatten(), state)

    longest = int(done_lengths[:, 0].max())
    return done[:, 0, begin : begin + longest]



def check_decoding(beams: int, max_new: int, min_new: int, penalty: float, ngram: int) -> None:
    if not (isinstance(beams, int) and beams >= 1):
        raise ConfigError(f"Decode.num_beams must be an integer >= 1, got {beams!r}")
    if not (isinstance(max_new, int) and max_new >= 1):
        raise ConfigError(f"Decode.max_new_tokens must be an integer >= 1, got {max_new!r}")
    if not (isinstance(min_new, int) and min_new >= 0):
        raise ConfigError(f"Decode.min_new_tokens must be an integer >= 0, got {min_new!r}")
    if not penalty > 0:
        raise ConfigError(f"Decode.repetition_penalty must be > 0, got {penalty!r}")
    if not (isinstance(ngram, int) and ngram >= 0):
        raise ConfigError(f"Decode.no_repeat_ngram_size must be an integer >= 0, got {ngram!r}")


class Processors:
    """HF's logits processors, in HF's order, over the generated tokens only (no prompt ids exist)."""

    def __init__(self, eos: int, min_new: int, penalty: float, ngram: int):
        self.eos, self.min_new, self.penalty, self.ngram = eos, min_new, penalty, ngram

    def __call__(self, scores: Tensor, generated: Tensor, step: int) -> Tensor:
        """``scores`` [N, V] float32; ``generated`` [N, S + step] the start tokens and the tokens so far."""
        if self.penalty != 1.0 and generated.shape[1] > 0:
            seen = paddle.take_along_axis(scores, generated, 1)
            seen = paddle.where(seen < 0, seen * self.penalty, seen / self.penalty)
            scores = paddle.put_along_axis(scores, generated, seen, 1)
        if self.ngram > 0 and generated.shape[1] >= self.ngram:
            scores = scores.masked_fill(banned_ngrams(generated, self.ngram, scores.shape[-1]), -math.inf)
        if step < self.min_new:
            scores = scores.masked_fill(paddle.arange(scores.shape[-1]) == self.eos, -math.inf)
        return scores


def banned_ngrams(generated: Tensor, n: int, vocab: int) -> Tensor:
    """[N, V] True for tokens that would repeat an n-gram: those that followed the last n-1 tokens before."""
    rows, length = generated.shape
    starts = paddle.arange(length - n + 1, dtype="int64")
    grams = paddle.stack([paddle.gather(generated, starts + i, axis=1) for i in range(n)], axis=-1)  # [N, W, n]
    last = generated[:, length - n + 1:]  # the n-1 tokens an n-gram would continue
    same = (grams[:, :, : n - 1] == last.unsqueeze(1)).all(axis=-1) if n > 1 else paddle.ones(grams.shape[:2], "bool")
    banned = paddle.where(same, grams[:, :, n - 1], paddle.full_like(grams[:, :, n - 1], vocab))
    hits = paddle.put_along_axis(paddle.zeros([rows, vocab + 1]), banned, 1.0, 1)
    return hits[:, :vocab] > 0
