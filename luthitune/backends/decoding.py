"""Continuous batching for the local backend: a decode loop that keeps ``slots`` sequences in flight.

``transformers``' ``generate()`` runs a padded batch until its longest member finishes, so one answer that
fills its whole schema budget holds up seven finished ones. Here a finished sequence leaves the batch at
once and the next waiting prompt takes its slot: its prompt is prefilled on its own and its key/value cache
is joined to the running one (left-padded to a common length, as ``generate()`` does for a padded batch).

A finished sequence may be followed up at once: ``on_done`` can return a new prompt for the same item (a retry with
its feedback), which joins the waiting line instead of waiting for a new batch after the slowest answer.

Grammar constraints use xgrammar's ``GrammarMatcher`` per sequence (one bitmask row each), and sampling
(temperature, top-p, repetition penalty) is done here, so every sequence can finish independently.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from luthitune import cancel

log = logging.getLogger(__name__)


@dataclass
class _Seq:
    index: int  # sequence number: the caller's input position, then one more for each follow-up (its sampling seed)
    prompt: list[int]
    matcher: Any = None
    rng: torch.Generator | None = None  # per sequence: its samples do not depend on what it is batched with
    item: int = -1  # the caller's input this sequence answers (a follow-up answers the same item again)
    generated: list[int] = field(default_factory=list)
    finished: bool = False  # ended with EOS / a complete grammar (not cut off by the budget)


GROW = 256  # spare sequence positions allocated at a time
TOP_K = 50  # candidates considered by nucleus sampling (transformers' default top_k)
MIN_PREFIX = 16  # shortest common prompt prefix worth caching
FILL_THREADS = max(1, min(4, os.cpu_count() or 1))


def _grow_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        """A cache layer whose keys / values are the view ``buf[:rows, :, start:end]`` of buffers with spare room.

        ``DynamicLayer`` appends with ``torch.cat``, copying the whole cache at every step: at batch 8 that was a
        third of the step time on a 2-core CPU. Here a decode step writes its token in place; a finished row
        leaves by moving the rows below it up; columns no row uses any more are dropped by moving ``start``; a
        newcomer's rows are written into the free rows. The buffers are reallocated only when they are full.
        Padding columns are zeros: they are masked out, but must not hold NaNs.
        """

        def _set(self, kbuf, vbuf, rows: int, start: int, end: int) -> None:
            self._kbuf, self._vbuf, self._rows, self._start, self._end = kbuf, vbuf, rows, start, end
            self.keys, self.values = kbuf[:rows, :, start:end], vbuf[:rows, :, start:end]

        def _realloc(self, rows: int, width: int, extra: int = 0) -> None:
            """New buffers for ``rows`` rows; the current rows keep their columns right-aligned in ``width``."""
            k, v, n = self.keys, self.values, self._end - self._start
            kbuf = k.new_zeros((rows, k.shape[1], width + extra + GROW, k.shape[3]))
            vbuf = v.new_zeros((rows, v.shape[1], width + extra + GROW, v.shape[3]))
            kbuf[: self._rows, :, width - n : width] = k
            vbuf[: self._rows, :, width - n : width] = v
            self._set(kbuf, vbuf, self._rows, 0, width)

        def seed(self, keys, values, rows: int, extra: int) -> None:
            """Start as ``rows`` copies of a cached prefix, with room for ``extra`` more positions."""
            self.lazy_initialization(keys, values)
            self.keys, self.values, self._rows, self._start, self._end = keys, values, 1, 0, keys.shape[-2]
            self._realloc(rows, keys.shape[-2], extra)
            self._kbuf[1:rows, :, : self._end] = keys
            self._vbuf[1:rows, :, : self._end] = values
            self._set(self._kbuf, self._vbuf, rows, 0, self._end)

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or getattr(self, "_kbuf", None) is None:
                self.lazy_initialization(key_states, value_states)
                self.keys, self.values = key_states, value_states
                self._rows, self._start, self._end = key_states.shape[0], 0, key_states.shape[-2]
                self._realloc(self._rows, self._end)
                return self.keys, self.values
            add = key_states.shape[-2]
            if self._end + add > self._kbuf.shape[-2]:
                self._realloc(self._kbuf.shape[0], self._end - self._start, add)
            end = self._end + add
            self._kbuf[: self._rows, :, self._end : end] = key_states
            self._vbuf[: self._rows, :, self._end : end] = value_states
            self._set(self._kbuf, self._vbuf, self._rows, self._start, end)
            return self.keys, self.values

        def join(self, other) -> None:
            """Add ``other``'s rows below these, both right-aligned; the shorter side is left-padded."""
            k2, v2 = other.keys, other.values
            r1, r2, n1, n2 = self._rows, k2.shape[0], self._end - self._start, k2.shape[-2]
            width = max(n1, n2)
            if r1 + r2 > self._kbuf.shape[0] or self._end < width:
                self._realloc(max(r1 + r2, self._kbuf.shape[0]), width)
            elif n1 < width:  # widen to the left, into columns dropped earlier
                self._kbuf[:r1, :, self._end - width : self._start] = 0
                self._vbuf[:r1, :, self._end - width : self._start] = 0
            start, end = self._end - width, self._end
            for buf, src in ((self._kbuf, k2), (self._vbuf, v2)):
                buf[r1 : r1 + r2, :, start : end - n2] = 0
                buf[r1 : r1 + r2, :, end - n2 : end] = src
            self._set(self._kbuf, self._vbuf, r1 + r2, start, end)

        def retire(self, keep: list[int], trim: int) -> None:
            """Keep only rows ``keep`` (ascending), moved up in place, and drop the ``trim`` leftmost columns."""
            s, e = self._start, self._end
            for i, r in enumerate(keep):
                if i != r:  # r > i: the rows still to be read lie below the ones written
                    self._kbuf[i, :, s:e] = self._kbuf[r, :, s:e]
                    self._vbuf[i, :, s:e] = self._vbuf[r, :, s:e]
            self._set(self._kbuf, self._vbuf, len(keep), s + trim, e)

    return GrowLayer


def new_cache(config):
    """A ``DynamicCache`` whose layers grow in place (see ``GrowLayer``)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    layer = _grow_layer_class()
    cache.layers = [layer() for _ in cache.layers]
    return cache


def _layers(cache) -> list:
    return list(cache.layers)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


class ContinuousBatcher:
    """Generates one answer per prompt with at most ``slots`` sequences in the forward pass at a time."""

    def __init__(self, model, *, pad_id: int, eos_ids: set[int], vocab_size: int):
        self.model = model
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.vocab_size = vocab_size
        # transformers renamed ``past_key_values`` to ``cache`` (5.2x); the cache object is updated in place.
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def _cache_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the prompts' common prefix once (system prompt, constitution...): newcomers copy its keys and
        values instead of recomputing them. Prefill is compute-bound and was the largest cost after decoding."""
        self.prefix, self.prefix_ids = None, []
        n = min(len(p) for p in prompts) - 1  # every prompt keeps at least one token of its own
        first, size = prompts[0], 0
        while size < n and all(p[size] == first[size] for p in prompts):
            size += 1
        if len(prompts) < 2 or size < MIN_PREFIX:
            return
        self.prefix_ids = first[:size]
        cache = new_cache(self.model.config)
        dev = self.model.device
        self.model(
            input_ids=torch.tensor([first[:size]], device=dev),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )
        self.prefix = (size, [(layer.keys.clone(), layer.values.clone()) for layer in _layers(cache)])

    def _shares_prefix(self, s: _Seq) -> bool:
        n = len(self.prefix_ids)
        return bool(self.prefix) and len(s.prompt) > n and s.prompt[:n] == self.prefix_ids

    def _prefill(self, seqs: list[_Seq], *, cached: bool = True):
        plen, kv = self.prefix if self.prefix and cached else (0, None)
        tails = [s.prompt[plen:] for s in seqs]
        width = max(len(t) for t in tails)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), plen + width), dtype=torch.long)
        mask[:, :plen] = 1
        for r, t in enumerate(tails):  # [prefix][padding][own tokens]: padding sits between, masked out
            ids[r, width - len(t) :] = torch.tensor(t)
            mask[r, plen + width - len(t) :] = 1
        dev = self.model.device
        t0 = time.perf_counter()
        log.debug("Prefill: %d prompt(s), %d tokens each after a cached prefix of %d", len(seqs), width, plen)
        cache = new_cache(self.model.config)
        if kv is not None:
            for layer, (k, v) in zip(_layers(cache), kv, strict=True):
                layer.seed(k, v, len(seqs), width)
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=_positions(mask)[:, plen:].to(dev),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )
        log.debug("Prefill done in %.2f s", time.perf_counter() - t0)
        return cache, mask, out.logits[:, -1, :].float()

    def run(
        self,
        prompts: list[list[int]],
        *,
        slots: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        repetition_penalty: float,
        grammars: list[Any] | None,
        penalty_exempt: torch.Tensor | None = None,
        min_new_tokens: int = 0,
        seed: int | None = None,
        on_done: Callable[[_Seq], list[int] | None] | None = None,
    ) -> list[_Seq]:
        """Every prompt's answer (and every follow-up's), in sequence order. ``on_done(seq)`` is called as each one
        finishes; a prompt it returns is queued as the next sequence for the same item (``seq.item``)."""
        import xgrammar as xgr

        def rng(i: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed + i if seed is not None else int(torch.randint(2**62, ())))

        waiting = deque(
            _Seq(i, p, xgr.GrammarMatcher(grammars[i]) if grammars else None, rng(i), item=i)
            for i, p in enumerate(prompts)
        )
        sequences = len(prompts)
        self._cache_prefix(prompts)
        done: list[_Seq] = []
        active: list[_Seq] = []
        cache = mask = logits = None
        bitmask = xgr.allocate_token_bitmask(slots, self.vocab_size) if grammars else None
        # Masks for all rows in one call, spread over threads by xgrammar (filling them one by one in Python
        # cost about a sixth of a batch-8 step).
        batch_matcher = xgr.BatchGrammarMatcher(max_threads=FILL_THREADS) if grammars else None

        dev = self.model.device
        while waiting or active:
            cancel.check()  # a cancelled run stops within one decode step; finished answers were handed over
            # Fill free slots: prefill the newcomers together and join their cache to the running one.
            if waiting and len(active) < slots:
                new = [waiting.popleft() for _ in range(min(slots - len(active), len(waiting)))]
                # A follow-up usually extends its item's prompt, so it shares the cached prefix; one that does not
                # is prefilled whole.
                whole = {id(q) for q in new if self.prefix and not self._shares_prefix(q)}
                groups = ([q for q in new if id(q) not in whole], True), ([q for q in new if id(q) in whole], False)
                for group, cached in groups:
                    if not group:
                        continue
                    c2, m2, l2 = self._prefill(group, cached=cached)
                    if cache is None:
                        cache, mask, logits = c2, m2, l2
                    else:
                        width = max(mask.shape[1], m2.shape[1])
                        for layer, other in zip(_layers(cache), _layers(c2), strict=True):
                            layer.join(other)
                        mask = torch.cat(
                            [
                                torch.nn.functional.pad(mask, (width - mask.shape[1], 0)),
                                torch.nn.functional.pad(m2, (width - m2.shape[1], 0)),
                            ]
                        )
                        logits = torch.cat([logits, l2])
                    active += group

            # Choose each sequence's next token.
            logits = logits[:, : self.vocab_size]
            if repetition_penalty != 1.0:
                for r, s in enumerate(active):
                    seen = torch.tensor(sorted(set(s.prompt) | set(s.generated)), device=logits.device)
                    if penalty_exempt is not None:  # e.g. JSON syntax: quotes and braces may repeat
                        seen = seen[~penalty_exempt[seen]]
                    score = logits[r, seen]
                    logits[r, seen] = torch.where(score < 0, score * repetition_penalty, score / repetition_penalty)
            if min_new_tokens:
                for r, s in enumerate(active):
                    if len(s.generated) < min_new_tokens:
                        logits[r, list(self.eos_ids)] = -float("inf")
            if grammars:
                if FILL_THREADS > 1:
                    batch_matcher.batch_fill_next_token_bitmask([s.matcher for s in active], bitmask)
                else:
                    for r, s in enumerate(active):
                        s.matcher.fill_next_token_bitmask(bitmask, r)
                xgr.apply_token_bitmask_inplace(logits, bitmask[: len(active)].to(logits.device))
            if temperature > 0:
                # Nucleus sampling within the TOP_K most likely tokens (as generate() does by default): sorting
                # the whole 49k vocabulary for every row at every step cost more than the grammar.
                top, ids = torch.topk(logits, k=min(TOP_K, logits.shape[-1]), dim=-1)
                probs = torch.softmax(top / temperature, dim=-1)
                if top_p < 1.0:
                    drop = probs.cumsum(-1) - probs > top_p
                    probs = probs.masked_fill(drop, 0.0)
                picks = [torch.multinomial(probs[r], 1, generator=s.rng) for r, s in enumerate(active)]
                tokens = ids.gather(-1, torch.stack(picks)).squeeze(-1)
            else:
                tokens = logits.argmax(dim=-1)

            # Record them; retire finished sequences.
            keep: list[int] = []
            for r, s in enumerate(active):
                t = int(tokens[r])
                if s.matcher is not None:
                    s.matcher.accept_token(t)
                s.generated.append(t)
                if t in self.eos_ids or (s.matcher is not None and s.matcher.is_terminated()):
                    s.finished = True
                elif len(s.generated) < max_new_tokens:
                    keep.append(r)
                    continue
                done.append(s)
                follow = on_done(s) if on_done else None
                if follow:
                    matcher = xgr.GrammarMatcher(grammars[s.item]) if grammars else None
                    # Its item's sampling stream afresh, as the same retry asked in a new call would draw it: what
                    # a retry samples depends on its item and prompt, not on how many sequences ran before it.
                    waiting.append(_Seq(sequences, list(follow), matcher, rng(s.item), item=s.item))
                    sequences += 1
            if len(keep) < len(active):
                mask, tokens = mask[keep], tokens[keep]
                active = [active[r] for r in keep]
                # drop the left columns no remaining sequence uses
                unused = int((mask.sum(0) == 0).long().cumprod(0).sum()) if active else 0
                for layer in _layers(cache):
                    layer.retire(keep, unused)
                mask = mask[:, unused:]
            if not active:
                cache = mask = logits = None
                continue

            # One decode step for every sequence in flight.
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype)], dim=1)
            out = self.model(
                input_ids=tokens.view(-1, 1).to(dev),
                attention_mask=mask.to(dev),
                position_ids=(mask.sum(-1, keepdim=True) - 1).to(dev),
                use_cache=True,
                **{self.cache_kw: cache},
            )
            logits = out.logits[:, -1, :].float()
        return sorted(done, key=lambda s: s.index)
