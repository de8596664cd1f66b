"""The ZeRO-1 partition plan (hvdtrain.core.partition), single process, no framework."""

import pytest

from hvdtrain.core.partition import ParamSpec, Piece, plan


def specs(*numels, itemsize=4, kind="f32", start=0):
    return [ParamSpec(start + i, n, itemsize, kind) for i, n in enumerate(numels)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_every_element_has_exactly_one_owner_and_shards_are_equal(size):
    numels = (5, 16, 48, 3, 1, 80)  # 153 elements: divisible by none of 2, 4, 7
    found = plan([specs(*numels)], size)
    (bucket,) = found.buckets
    assert bucket.numel == 153 and bucket.shard_numel == -(-153 // size)
    assert bucket.padded_numel == bucket.shard_numel * size and bucket.padded_numel - 153 < size
    owners = {}
    for rank in range(size):
        pieces = list(bucket.pieces(rank))
        assert sum(p.stop - p.start for p in pieces) <= bucket.shard_numel
        for piece in pieces:
            for element in range(piece.start, piece.stop):
                assert (piece.index, element) not in owners
                owners[piece.index, element] = rank
    assert len(owners) == 153
    assert found.shard_numel() == bucket.shard_numel and found.numel() == 153


def test_pieces_of_a_straddling_parameter():
    (bucket,) = plan(
        [specs(3, 4)], 2
    ).buckets  # 7 elements -> shards of 4: [p0 0..3, p1 0..1], [p1 1..4, pad]
    assert list(bucket.pieces(0)) == [Piece(0, 0, 3, 0), Piece(1, 0, 1, 3)]
    assert list(bucket.pieces(1)) == [Piece(1, 1, 4, 0)]
    assert bucket.shard_range(1) == (4, 8)


def test_buckets_follow_groups_kinds_and_the_size_cap():
    groups = [
        specs(10, 10, 10, 30, itemsize=4),
        [
            ParamSpec(4, 6, 8, "f64"),
            ParamSpec(5, 2, 4, "f32"),
            ParamSpec(6, 0, 4, "f32"),
            ParamSpec(7, 6, 8, "f64"),
        ],
    ]
    found = plan(groups, 2, bucket_bytes=80)  # 20 float32 elements per bucket
    # by kind in order of first appearance; the empty parameter left out
    assert [(b.group, [s.index for s in b.slots]) for b in found.buckets] == [
        (0, [0, 1]),
        (0, [2]),
        (0, [3]),  # 30 elements alone: a parameter is never split across buckets
        (1, [4]),
        (1, [7]),
        (1, [5]),
    ]
    assert [s.offset for s in found.buckets[0].slots] == [0, 10]


def test_bad_arguments():
    with pytest.raises(ValueError, match="world size must be >= 1, got 0"):
        plan([specs(1)], 0)
    with pytest.raises(ValueError, match="bucket_bytes must be >= 1, got 0"):
        plan([specs(1)], 2, bucket_bytes=0)
