"""datatypes.bounded: a dict that empties itself rather than grow past its limit."""

from __future__ import annotations

import pytest

from datatypes.bounded import BoundedDict


def test_a_new_key_in_a_full_dict_empties_it_first():
    d: BoundedDict[int, str] = BoundedDict(3)
    for k in range(3):
        d[k] = str(k)
    d[1] = "one"  # an existing key replaces its value, nothing is dropped
    assert d == {0: "0", 1: "one", 2: "2"}
    d[3] = "3"
    assert d == {3: "3"} and d.get(0) is None


def test_every_way_of_adding_respects_the_limit():
    d: BoundedDict[int, int] = BoundedDict(2)
    d.update({1: 1, 2: 2, 3: 3})
    assert len(d) <= 2 and d[3] == 3
    assert d.setdefault(4, 4) == 4 and len(d) <= 2 and d.setdefault(4, 5) == 4
    hit = d[5] = 5
    assert hit == 5 and len(d) <= 2


def test_a_limit_below_one_is_refused():
    with pytest.raises(ValueError, match="limit must be >= 1"):
        BoundedDict(0)
