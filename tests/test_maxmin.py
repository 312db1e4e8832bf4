"""Max-min fair sharing (transport.maxmin): rates on a shared bottleneck, sprayed flows."""

from __future__ import annotations

import numpy as np
import pytest

from transport.maxmin import Incidence, completion_time, max_min_rates


def test_max_min_rates_share_a_bottleneck_fairly():
    # flows 0,1 share link 0 (cap 10); flow 1 also crosses link 1 (cap 2); flow 2 only link 1
    inc = Incidence(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), np.ones(4), 3, 2)
    rates = max_min_rates(inc, np.array([10.0, 2.0]))
    assert np.allclose(rates, [9.0, 1.0, 1.0])
    finish = completion_time(inc, np.array([10.0, 2.0]), np.array([9.0, 1.0, 3.0]))
    # t=1: flows 0 and 1 done; flow 2 then has link 1 alone: 2 more bytes at 2/s
    assert np.allclose(finish, [1.0, 1.0, 2.0])


def test_sprayed_flow_weights_spread_over_links():
    inc = Incidence(np.array([0, 0]), np.array([0, 1]), np.array([0.5, 0.5]), 1, 2)
    assert np.allclose(max_min_rates(inc, np.array([1.0, 1.0])), [2.0])
    with pytest.raises(ValueError, match="capacity has shape"):
        max_min_rates(inc, np.array([1.0]))
