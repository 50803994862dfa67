"""One reading of 1e38 among speeds is flagged (issue 22, point 9), as negative readings are: it would dominate
the scaler and z-score every other reading to about 0, silently."""

import torch

from helpers import random_series
from stgnn_launch.data.prepare.checks import sensor_warnings


def warnings_for(values, null_value=0.0):
    return sensor_warnings(values, [f"s{i}" for i in range(values.shape[1])], ["value"], [(0, 400)], null_value)


def test_a_reading_of_1e38_is_flagged():
    values = random_series(steps=600, nodes=7).values.clone()
    assert not any("sane range" in w for w in warnings_for(values))
    values[123, 4, 0] = 1e38
    flagged = [w for w in warnings_for(values) if "sane range" in w]
    assert len(flagged) == 1 and flagged[0].startswith("1 readings are beyond a sane range") and "1e+38" in flagged[0]


def test_counts_with_many_zeros_and_centred_data_are_not_flagged():
    counts = torch.zeros(600, 5, 1)
    counts[::7] = torch.randint(1, 200, (86, 5, 1)).float()  # bus counts: mostly 0, real zeros
    assert not any("sane range" in w for w in warnings_for(counts, null_value=None))
    centred = torch.randn(600, 5, 1)
    assert not any("sane range" in w for w in warnings_for(centred, null_value=None))
    centred[5, 2, 0] = -3e9
    assert any("sane range" in w and "largest 3e+09" in w for w in warnings_for(centred, null_value=None))
