"""The shared store's pieces that need no Redis: how states are stored, and the URL check.
Its behaviour against a real Redis is in tests/system/server/test_shared_sequences.py."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serving.core.settings import parse_settings
from lstm_serving.core.shared_sequences import decode_states, encode_states


def test_states_round_trip_exactly() -> None:
    rng = np.random.default_rng(0)
    states = {
        "initial_h_0": rng.standard_normal((2, 1, 64)).astype(np.float32),
        "initial_c_0": rng.standard_normal((2, 1, 64)).astype(np.float32),
        "initial_h_1": rng.standard_normal((1, 1, 32)).astype(np.float32),
    }
    back = decode_states(encode_states(states))
    assert back is not None and back.keys() == states.keys()
    for name, array in states.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], array)
    assert decode_states(encode_states(None)) is None  # a START without initial_state: zeros


def test_the_store_must_be_a_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_settings(["--sequence-store", "redis://r:6379/0"], {}).sequence_store
    with pytest.raises(SystemExit):
        parse_settings(["--sequence-store", "r:6379"], {})
    assert "a Redis URL is expected, redis://HOST:PORT/DB" in capsys.readouterr().err
