"""Read-your-writes tokens: what an ingest reply gives is what a read takes back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.domain.tokens import BadToken, decode_token, encode_token

pytestmark = pytest.mark.unit


@given(st.dictionaries(st.integers(0, 9999), st.integers(0, 2**63 - 1), max_size=64))
def test_a_token_decodes_to_the_offsets_it_was_made_of(offsets: dict[int, int]) -> None:
    assert decode_token(encode_token(offsets)) == offsets


def test_tokens_read_as_partition_dot_offset_pairs() -> None:
    assert encode_token({5: 12, 0: 7}) == "0.7_5.12"
    assert decode_token("0.7_5.12_0.3") == {0: 7, 5: 12}  # the highest offset counts
    assert decode_token("") == {}


@pytest.mark.parametrize("bad", ["x.1", "1", "1.", ".1", "1.2_", "1.2__3.4", "-1.2", "1.2 "])
def test_anything_else_is_refused_with_the_problem_named(bad: str) -> None:
    with pytest.raises(BadToken, match="'after' is not a token from an ingest reply"):
        decode_token(bad)
