"""Secure aggregation by pairwise additive masks, with dropout recovery through Shamir shares (chapter 03).

The server learns the SUM of the clients' updates and nothing else about any single one (Bonawitz et al. 2017,
simplified). Every pair of clients (i, j) agrees on a secret over the network with X25519 (`cryptography`), stretches
it into a mask with AES-CTR, and i adds the mask while j subtracts it. Updates are encoded as fixed-point integers
modulo 2^64, so each masked update is uniformly random on its own and the masks cancel exactly in the sum.

Dropout: each client also splits its X25519 private key into Shamir shares (threshold t) for the others. If a client
drops after the masks were fixed, t survivors hand the server their shares of its key; the server rebuilds the key,
recomputes that client's pairwise masks with the survivors and removes them. Bonawitz et al. add a second, self mask
per client so that a server cannot unmask a client that was merely late; Flower's SecAgg+ workflow implements the
full protocol. Shamir sharing is written out here to teach it (over the prime field 2^521 - 1); tests check it
against Flower's pycryptodome-based `create_shares` / `combine_shares` behaviour.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCALE_BITS = 32  # fixed point: x -> round(x * 2^32) mod 2^64; resolution 2.3e-10
PRIME = 2**521 - 1  # a Mersenne prime above every 32-byte secret
KEY_BYTES = 32


# ---------------------------------------------------------------------------------------------- encoding


def encode(x: np.ndarray) -> np.ndarray:
    """Floats -> fixed-point integers modulo 2^64 (uint64); |x| must stay below 2^31."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all() or np.abs(x).max(initial=0) >= 2**30:
        raise ValueError("values must be finite and below 2^30 in size to be encoded; clip the update first")
    return np.round(x * 2.0**SCALE_BITS).astype(np.int64).view(np.uint64)


def decode(u: np.ndarray) -> np.ndarray:
    """uint64 fixed point -> floats (the inverse of `encode`, also for sums of encodings)."""
    return np.asarray(u, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**SCALE_BITS


# ---------------------------------------------------------------------------------------------- keys and masks


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 bytes a client publishes."""
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 secret bytes of a private key (what the Shamir shares protect)."""
    return private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def pair_key(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 key agreement then HKDF-SHA256: the same 32-byte key on both sides of a pair."""
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"course pairwise mask").derive(shared)


def prg(key: bytes, size: int) -> np.ndarray:
    """`size` pseudo-random uint64 from a 32-byte key (AES-256 in counter mode over zeros)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(b"\x00" * 16)).encryptor()
    return np.frombuffer(encryptor.update(b"\x00" * (8 * size)) + encryptor.finalize(), dtype=np.uint64).copy()


def pairwise_mask(me: int, private: X25519PrivateKey, publics: dict[int, bytes], size: int) -> np.ndarray:
    """Sum over peers j of +PRG(k_ij) for j > me and -PRG(k_ij) for j < me, modulo 2^64."""
    mask = np.zeros(size, dtype=np.uint64)
    for peer, public in publics.items():
        if peer == me:
            continue
        stream = prg(pair_key(private, public), size)
        mask = mask + stream if peer > me else mask - stream  # uint64 arithmetic wraps modulo 2^64
    return mask


def mask_update(me: int, update: np.ndarray, private: X25519PrivateKey, publics: dict[int, bytes]) -> np.ndarray:
    """What client `me` sends: its encoded update plus its pairwise mask (uniform on its own)."""
    encoded = encode(update)
    return encoded + pairwise_mask(me, private, publics, encoded.size)


# ---------------------------------------------------------------------------------------------- Shamir


def shamir_split(secret: bytes, parties: int, threshold: int) -> list[tuple[int, int]]:
    """Shares (x, f(x)) for x = 1..parties of a random degree threshold-1 polynomial with f(0) = secret."""
    if not 1 <= threshold <= parties:
        raise ValueError(f"threshold must be in 1..parties ({parties}), got {threshold}; a majority is typical")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return [(x, sum(c * pow(x, k, PRIME) for k, c in enumerate(coefficients)) % PRIME) for x in range(1, parties + 1)]


def shamir_combine(shares: list[tuple[int, int]], length: int = KEY_BYTES) -> bytes:
    """f(0) by Lagrange interpolation from any `threshold` shares (fewer give an unrelated number)."""
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, (xj, _) in enumerate(shares):
            if i != j:
                num, den = num * -xj % PRIME, den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return (secret % 2 ** (8 * length)).to_bytes(length, "big")


# ---------------------------------------------------------------------------------------------- the protocol


@dataclass
class SecureSum:
    """What the server ends with: the decoded sum, who dropped, what it saw and how many bytes went up."""

    total: np.ndarray
    survivors: list[int]
    dropped: list[int]
    masked: dict[int, np.ndarray]
    bytes_up: int


def secure_sum(
    updates: list[np.ndarray],
    dropped: set[int] | frozenset = frozenset(),
    threshold: int | None = None,
    helpers: int | None = None,
) -> SecureSum:
    """Run the protocol on one machine: keys, shares, masked updates, dropouts, recovery, unmasking.

    `dropped` clients fix their masks but never send their update. The server collects `helpers` (default:
    threshold) shares of each dropped client's key from survivors; with fewer than `threshold` it cannot unmask.
    """
    n = len(updates)
    threshold = threshold or n // 2 + 1
    if not 2 <= threshold <= n:
        raise ValueError(f"threshold must be in 2..{n} for {n} clients, got {threshold}")
    survivors = [i for i in range(n) if i not in dropped]
    if len(survivors) < threshold:
        raise ValueError(
            f"only {len(survivors)} clients survived but the threshold is {threshold}: the dropped "
            "clients' masks cannot be removed; lower the threshold or wait for more clients"
        )
    keys = [X25519PrivateKey.generate() for _ in range(n)]  # round 0: advertise keys
    publics = {i: public_bytes(k) for i, k in enumerate(keys)}
    shares = {i: shamir_split(private_bytes(k), n, threshold) for i, k in enumerate(keys)}  # round 1: share keys
    masked = {i: mask_update(i, updates[i], keys[i], publics) for i in survivors}  # round 2: masked inputs
    total = np.zeros(updates[0].size, dtype=np.uint64)
    for y in masked.values():
        total = total + y
    for d in sorted(dropped):  # round 3: unmask the dropped
        rebuilt = X25519PrivateKey.from_private_bytes(
            shamir_combine([shares[d][j] for j in survivors[: helpers or threshold]])
        )
        for j in survivors:  # survivor j added -PRG(k_dj) if d < j, +PRG(k_dj) if d > j: cancel that
            stream = prg(pair_key(rebuilt, publics[j]), total.size)
            total = total + stream if d < j else total - stream
    bytes_up = sum(y.nbytes for y in masked.values()) + n * 32
    return SecureSum(decode(total), survivors, sorted(dropped), masked, bytes_up)
