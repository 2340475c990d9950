from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedml import Secret, UnsealError
from trustedml.errors import ConfigError
from trustedml.hazmat import sealing
from trustedml.hazmat.sealing import HEADER_SIZE, ScryptParams

VECTORS = Path(__file__).parent / "vectors"
CHEAP = ScryptParams(log2_n=10)
PW = Secret("correct horse battery staple")


def test_known_answer_vector_opens() -> None:
    blob = (VECTORS / "seal-v1.bin").read_bytes()
    assert sealing.read_params(blob) == ScryptParams(10, 8, 1)
    plain = sealing.unseal(blob, Secret("vector passphrase"))
    assert plain == b"trusted-ml sealing known-answer vector\n"


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=4096))
def test_round_trip(data: bytes) -> None:
    assert sealing.unseal(sealing.seal(data, PW, CHEAP), PW) == data


def test_each_seal_is_fresh() -> None:
    assert sealing.seal(b"x", PW, CHEAP) != sealing.seal(b"x", PW, CHEAP)


def test_wrong_passphrase_is_refused() -> None:
    blob = sealing.seal(b"payload", PW, CHEAP)
    with pytest.raises(UnsealError, match="wrong passphrase, or the file was modified"):
        sealing.unseal(blob, Secret("not the passphrase"))


def test_flipping_any_byte_is_detected() -> None:
    blob = sealing.seal(b"sixteen byte msg", PW, CHEAP)
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(UnsealError):
            sealing.unseal(bytes(bad), PW)


@pytest.mark.parametrize("cut", [0, 7, HEADER_SIZE, HEADER_SIZE + 15])
def test_truncation_is_refused(cut: int) -> None:
    blob = sealing.seal(b"payload", PW, CHEAP)
    with pytest.raises(UnsealError, match="not a trusted-ml sealed file"):
        sealing.unseal(blob[:cut], PW)


def test_hostile_cost_in_header_is_refused_before_deriving() -> None:
    blob = bytearray(sealing.seal(b"payload", PW, CHEAP))
    blob[9] = 40  # log2_n = 40 would ask for terabytes
    with pytest.raises(UnsealError, match=r"log2_n must be in 10..22, got 40"):
        sealing.unseal(bytes(blob), PW)


def test_unknown_kdf_is_refused() -> None:
    blob = bytearray(sealing.seal(b"payload", PW, CHEAP))
    blob[8] = 9
    with pytest.raises(UnsealError, match="unsupported KDF id: expected 1, got 9"):
        sealing.unseal(bytes(blob), PW)


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="got 2"):
        ScryptParams(log2_n=2)
    with pytest.raises(ConfigError, match="r must be"):
        ScryptParams(r=0)
    with pytest.raises(ConfigError, match="p must be"):
        ScryptParams(p=99)
