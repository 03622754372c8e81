"""Secure aggregation (chapter 03): exact sums, masked updates look like noise, dropout recovery, Shamir."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from scipy import stats

from course_utils import secure_agg as sa


def _updates(n: int = 5, d: int = 2000, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.05, d).astype(np.float32) for _ in range(n)]


def test_encoding_round_trips_and_sums() -> None:
    x = np.array([0.5, -1.25, 3e-3, -7.0])
    np.testing.assert_allclose(sa.decode(sa.encode(x)), x, atol=2**-32)
    np.testing.assert_allclose(sa.decode(sa.encode(x) + sa.encode(-2 * x)), -x, atol=2**-31)
    with pytest.raises(ValueError, match="clip the update first"):
        sa.encode(np.array([np.inf]))


def test_both_sides_of_a_pair_derive_the_same_key() -> None:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    assert sa.pair_key(a, sa.public_bytes(b)) == sa.pair_key(b, sa.public_bytes(a))
    assert sa.prg(sa.pair_key(a, sa.public_bytes(b)), 4).dtype == np.uint64


def test_the_servers_sum_of_masked_updates_is_the_true_sum() -> None:
    updates = _updates()
    result = sa.secure_sum(updates)
    true_sum = np.sum(np.stack(updates).astype(np.float64), axis=0)
    np.testing.assert_allclose(result.total, true_sum, atol=len(updates) * 2**-32)
    np.testing.assert_allclose(result.total, np.sum(np.stack(updates), axis=0), atol=1e-6)  # float32 precision


def test_one_masked_update_is_indistinguishable_from_uniform_noise() -> None:
    updates = [np.full(5000, 0.25, dtype=np.float32) for _ in range(3)]  # constant: as far from noise as can be
    masked = sa.secure_sum(updates).masked[0]
    assert stats.kstest(masked / 2.0**64, "uniform").pvalue > 1e-3
    bits = np.unpackbits(masked.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01
    assert stats.kstest(sa.encode(updates[0]) / 2.0**64, "uniform").pvalue < 1e-10  # unmasked: not noise at all
    assert abs(stats.pearsonr(masked[:-1].astype(float), masked[1:].astype(float))[0]) < 0.05


def test_a_client_that_drops_after_masking_is_unmasked_with_t_shares() -> None:
    updates = _updates(n=6)
    result = sa.secure_sum(updates, dropped={2, 4}, threshold=3)
    survivors = np.sum(np.stack([u for i, u in enumerate(updates) if i not in (2, 4)]).astype(np.float64), axis=0)
    assert result.survivors == [0, 1, 3, 5] and result.dropped == [2, 4]
    np.testing.assert_allclose(result.total, survivors, atol=6 * 2**-32)


def test_fewer_than_t_shares_cannot_unmask_and_too_few_survivors_are_refused() -> None:
    updates = _updates(n=6)
    broken = sa.secure_sum(updates, dropped={2}, threshold=4, helpers=3)
    survivors = np.sum(np.stack([u for i, u in enumerate(updates) if i != 2]).astype(np.float64), axis=0)
    assert np.abs(broken.total - survivors).max() > 1e3
    with pytest.raises(ValueError, match="only 2 clients survived but the threshold is 3"):
        sa.secure_sum(updates[:4], dropped={0, 1}, threshold=3)


def test_shamir_any_t_shares_rebuild_the_key_like_flowers_implementation() -> None:
    secret = sa.private_bytes(X25519PrivateKey.generate())
    shares = sa.shamir_split(secret, parties=5, threshold=3)
    for pick in ([0, 1, 2], [4, 2, 0], [1, 3, 4], [0, 1, 2, 3, 4]):
        assert sa.shamir_combine([shares[i] for i in pick]) == secret
    assert sa.shamir_combine(shares[:2]) != secret
    four = sa.shamir_split(secret, parties=6, threshold=4)  # an odd number of Lagrange factors as well
    assert sa.shamir_combine([four[i] for i in (5, 1, 3, 0)]) == secret and sa.shamir_combine(four[:3]) != secret
    theirs = create_shares(secret, 3, 5)  # Flower's SecAgg+ helper (pycryptodome, GF(2^128))
    assert combine_shares([theirs[i] for i in (4, 2, 0)]) == secret
