"""Continuous batching for the local backend: a decode loop that keeps ``slots`` sequences in flight.

``transformers``' ``generate()`` runs a padded batch until its longest member finishes, so one answer that
fills its whole schema budget holds up seven finished ones. Here a finished sequence leaves the batch at
once and the next waiting prompt takes its slot: its prompt is prefilled on its own and its key/value cache
is joined to the running one (left-padded to a common length, as ``generate()`` does for a padded batch).

Grammar constraints use xgrammar's ``GrammarMatcher`` per sequence (one bitmask row each), and sampling
(temperature, top-p, repetition penalty) is done here, so every sequence can finish independently.
"""

from __future__ import annotations

import inspect
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from luthitune import cancel


@dataclass
class _Seq:
    index: int  # position in the caller's input list
    prompt: list[int]
    matcher: Any = None
    rng: torch.Generator | None = None  # per sequence: its samples do not depend on what it is batched with
    generated: list[int] = field(default_factory=list)
    finished: bool = False  # ended with EOS / a complete grammar (not cut off by the budget)


GROW = 256  # spare sequence positions allocated at a time
TOP_K = 50  # candidates considered by nucleus sampling (transformers' default top_k)
MIN_PREFIX = 16  # shortest common prompt prefix worth caching
FILL_THREADS = max(1, min(4, os.cpu_count() or 1))


def _grow_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowLayer(DynamicLayer):
        """A cache layer whose keys / values are views of buffers with spare room along the sequence axis.

        ``DynamicLayer`` appends with ``torch.cat``, copying the whole cache at every step: at batch 8 that
        was a third of the step time on a 2-core CPU. Here a step writes its token in place; the buffers are
        reallocated only when full or after the batch is reshaped (rows joined, retired or trimmed).
        """

        def _adopt(self, extra: int) -> None:
            b, h, n, d = self.keys.shape
            kbuf = self.keys.new_empty((b, h, n + max(extra, GROW), d))
            vbuf = self.values.new_empty((b, h, n + max(extra, GROW), self.values.shape[-1]))
            kbuf[:, :, :n] = self.keys
            vbuf[:, :, :n] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
            self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                self.lazy_initialization(key_states, value_states)
                self.keys, self.values = key_states, value_states
                self._adopt(0)
                return self.keys, self.values
            n, add = self.keys.shape[-2], key_states.shape[-2]
            kbuf = getattr(self, "_kbuf", None)
            if (
                kbuf is None
                or self.keys.data_ptr() != kbuf.data_ptr()
                or self.keys.shape[0] != kbuf.shape[0]
                or n + add > kbuf.shape[-2]
            ):
                self._adopt(add)
            self._kbuf[:, :, n : n + add] = key_states
            self._vbuf[:, :, n : n + add] = value_states
            self.keys, self.values = self._kbuf[:, :, : n + add], self._vbuf[:, :, : n + add]
            return self.keys, self.values

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


def _left_pad(cache, n: int) -> None:
    if n <= 0:
        return
    for layer in _layers(cache):
        for name in ("keys", "values"):
            t = getattr(layer, name)
            pad = torch.zeros(t.shape[0], t.shape[1], n, t.shape[3], dtype=t.dtype, device=t.device)
            setattr(layer, name, torch.cat([pad, t], dim=2))


def _trim_left(cache, n: int) -> None:
    if n <= 0:
        return
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, n:, :]
        layer.values = layer.values[:, :, n:, :]


def _select(cache, rows: torch.Tensor) -> None:
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)


def _append(cache, other) -> None:
    for a, b in zip(_layers(cache), _layers(other), strict=True):
        a.keys = torch.cat([a.keys, b.keys], dim=0)
        a.values = torch.cat([a.values, b.values], dim=0)


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
        self.prefix = None
        n = min(len(p) for p in prompts) - 1  # every prompt keeps at least one token of its own
        first, size = prompts[0], 0
        while size < n and all(p[size] == first[size] for p in prompts):
            size += 1
        if len(prompts) < 2 or size < MIN_PREFIX:
            return
        cache = new_cache(self.model.config)
        dev = self.model.device
        self.model(
            input_ids=torch.tensor([first[:size]], device=dev),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )
        self.prefix = (size, [(layer.keys.clone(), layer.values.clone()) for layer in _layers(cache)])

    def _prefill(self, seqs: list[_Seq]):
        plen, kv = self.prefix if self.prefix else (0, None)
        tails = [s.prompt[plen:] for s in seqs]
        width = max(len(t) for t in tails)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), plen + width), dtype=torch.long)
        mask[:, :plen] = 1
        for r, t in enumerate(tails):  # [prefix][padding][own tokens]: padding sits between, masked out
            ids[r, width - len(t) :] = torch.tensor(t)
            mask[r, plen + width - len(t) :] = 1
        dev = self.model.device
        cache = new_cache(self.model.config)
        if kv is not None:
            for layer, (k, v) in zip(_layers(cache), kv, strict=True):
                layer.lazy_initialization(k, v)
                layer.keys = k.expand(len(seqs), -1, -1, -1).contiguous()
                layer.values = v.expand(len(seqs), -1, -1, -1).contiguous()
        out = self.model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=_positions(mask)[:, plen:].to(dev),
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )
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
        min_new_tokens: int = 0,
        seed: int | None = None,
        on_done: Callable[[_Seq], None] | None = None,
    ) -> list[_Seq]:
        import xgrammar as xgr

        def rng(i: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed + i if seed is not None else int(torch.randint(2**62, ())))

        waiting = deque(
            _Seq(i, p, xgr.GrammarMatcher(grammars[i]) if grammars else None, rng(i)) for i, p in enumerate(prompts)
        )
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
                c2, m2, l2 = self._prefill(new)
                if cache is None:
                    cache, mask, logits = c2, m2, l2
                else:
                    width = max(mask.shape[1], m2.shape[1])
                    _left_pad(cache, width - mask.shape[1])
                    _left_pad(c2, width - m2.shape[1])
                    mask = torch.cat(
                        [
                            torch.nn.functional.pad(mask, (width - mask.shape[1], 0)),
                            torch.nn.functional.pad(m2, (width - m2.shape[1], 0)),
                        ]
                    )
                    _append(cache, c2)
                    logits = torch.cat([logits, l2])
                active += new

            # Choose each sequence's next token.
            logits = logits[:, : self.vocab_size]
            if repetition_penalty != 1.0:
                for r, s in enumerate(active):
                    seen = torch.tensor(sorted(set(s.prompt) | set(s.generated)), device=logits.device)
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
                if on_done:
                    on_done(s)
            if len(keep) < len(active):
                rows = torch.tensor(keep, dtype=torch.long, device=dev)
                _select(cache, rows)
                mask, tokens = mask[keep], tokens[keep]
                active = [active[r] for r in keep]
                if active:  # drop the left columns no remaining sequence uses
                    unused = int((mask.sum(0) == 0).long().cumprod(0).sum())
                    _trim_left(cache, unused)
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
