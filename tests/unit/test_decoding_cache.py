"""The continuous batcher's in-place key/value cache against a reference built with plain ``torch.cat``.

Rows join (left-padded to a common width), decode steps append in place, finished rows leave and unused left
columns are dropped: after every operation the cache must hold exactly what concatenating tensors would.
"""

import torch

from luthitune.backends import decoding


def layer():
    return decoding._grow_layer_class()()


def rand(rows: int, n: int) -> torch.Tensor:
    return torch.randn(rows, 3, n, 4)


def left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))


def join(lay, ref_k, ref_v, rows: int, n: int):
    """Join ``rows`` newcomers of length ``n`` to ``lay``; the reference: both sides left-padded to the wider."""
    other = layer()
    k2, v2 = rand(rows, n), rand(rows, n)
    other.update(k2, v2)
    lay.join(other)
    w = max(ref_k.shape[2], n)
    return torch.cat([left_pad(ref_k, w), left_pad(k2, w)]), torch.cat([left_pad(ref_v, w), left_pad(v2, w)])


def check(lay, ref_k, ref_v):
    assert lay.keys.shape == ref_k.shape
    assert torch.equal(lay.keys, ref_k) and torch.equal(lay.values, ref_v)


def test_grow_layer_matches_concatenation_through_joins_steps_and_retirements():
    torch.manual_seed(0)
    lay = layer()
    k, v = rand(2, 5), rand(2, 5)
    lay.update(k, v)
    ref_k, ref_v = k.clone(), v.clone()
    check(lay, ref_k, ref_v)

    for step in range(300):  # past the buffer's spare room: it must reallocate and keep every row
        k1, v1 = rand(ref_k.shape[0], 1), rand(ref_k.shape[0], 1)
        lay.update(k1, v1)
        ref_k, ref_v = torch.cat([ref_k, k1], 2), torch.cat([ref_v, v1], 2)
        if step in (3, 40, 299):
            check(lay, ref_k, ref_v)

        if step == 10:  # a longer newcomer: the running rows are padded on the left
            ref_k, ref_v = join(lay, ref_k, ref_v, 1, ref_k.shape[2] + 7)
            check(lay, ref_k, ref_v)
        if step == 20:  # the first row finishes; the two leftmost columns are no longer used
            lay.retire([1, 2], 2)
            ref_k, ref_v = ref_k[[1, 2], :, 2:], ref_v[[1, 2], :, 2:]
            check(lay, ref_k, ref_v)
        if step == 30:  # a shorter newcomer goes into the freed row, right-aligned
            ref_k, ref_v = join(lay, ref_k, ref_v, 1, 4)
            check(lay, ref_k, ref_v)
        if step == 50:  # a newcomer slightly longer than the rows in flight: widened into the dropped columns
            ref_k, ref_v = join(lay, ref_k, ref_v, 2, ref_k.shape[2] + 1)
            check(lay, ref_k, ref_v)
        if step == 60:
            lay.retire([0, 3], 0)
            ref_k, ref_v = ref_k[[0, 3]], ref_v[[0, 3]]
            check(lay, ref_k, ref_v)


def test_seeded_prefix_is_copied_to_every_row():
    k, v = rand(1, 6), rand(1, 6)
    lay = layer()
    lay.seed(k, v, rows=3, extra=4)
    check(lay, k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1))
    k1, v1 = rand(3, 4), rand(3, 4)
    lay.update(k1, v1)  # the rows' own tokens, within the room asked for
    check(lay, torch.cat([k.expand(3, -1, -1, -1), k1], 2), torch.cat([v.expand(3, -1, -1, -1), v1], 2))
