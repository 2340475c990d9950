"""The Intel SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1): the
platform's identity (FMSPC, PCE-ID, PPID) and the TCB the PCK was issued for, read
with the strict DER reader. Public through :mod:`trustedml.hazmat.attestation.intel`."""

from __future__ import annotations

from dataclasses import dataclass

from trustedml.errors import EvidenceFormatError
from trustedml.hazmat.attestation import der as _der

__all__ = ["SGX_EXTENSION_OID", "PckExtension", "parse_pck_extension"]

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
_PPID = SGX_EXTENSION_OID + ".1"
_TCB = SGX_EXTENSION_OID + ".2"
_PCE_ID = SGX_EXTENSION_OID + ".3"
_FMSPC = SGX_EXTENSION_OID + ".4"
_SGX_TYPE = SGX_EXTENSION_OID + ".5"
_PLATFORM_INSTANCE_ID = SGX_EXTENSION_OID + ".6"
_CONFIGURATION = SGX_EXTENSION_OID + ".7"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
_CONFIG_FLAGS = {
    _CONFIGURATION + ".1": "dynamic_platform",
    _CONFIGURATION + ".2": "cached_keys",
    _CONFIGURATION + ".3": "smt_enabled",
}
_SGX_TYPE_NAMES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


@dataclass(frozen=True)
class PckExtension:
    """The Intel SGX extension of a PCK certificate: the platform's identity (FMSPC,
    PCE-ID, PPID) and the TCB the PCK was issued for."""

    ppid: bytes
    tcb_components: tuple[int, ...]
    pce_svn: int
    cpusvn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None

    @property
    def sgx_type_name(self) -> str:
        return _SGX_TYPE_NAMES.get(self.sgx_type, f"unknown ({self.sgx_type})")


def _oid_value_pairs(value: bytes, what: str) -> dict[str, _der.Tlv]:
    # SEQUENCE OF SEQUENCE { OID, value } as a dict; a duplicate would be ambiguous.
    out: dict[str, _der.Tlv] = {}
    for item in _der.sequence_items(value, what):
        pair = _der.sequence_items(item.expect(_der.SEQUENCE, what), what)
        if len(pair) != 2:
            raise EvidenceFormatError(f"{what}: entry has {len(pair)} elements, expected 2")
        oid = _der.decode_oid(pair[0].expect(_der.OBJECT_IDENTIFIER, what), what)
        if oid in out:
            raise EvidenceFormatError(f"{what}: duplicate entry {oid}")
        out[oid] = pair[1]
    return out


def _required(entries: dict[str, _der.Tlv], oid: str, what: str) -> _der.Tlv:
    try:
        return entries[oid]
    except KeyError:
        raise EvidenceFormatError(f"PCK SGX extension: {what} ({oid}) is missing") from None


def _octets(tlv: _der.Tlv, size: int, what: str) -> bytes:
    value = tlv.expect(_der.OCTET_STRING, what)
    if len(value) != size:
        raise EvidenceFormatError(f"{what}: expected {size} bytes, got {len(value)}")
    return value


def _bounded_int(tlv: _der.Tlv, tag: int, upper: int, what: str) -> int:
    value = _der.decode_integer(tlv.expect(tag, what), what)
    if not 0 <= value <= upper:
        raise EvidenceFormatError(f"{what}: {value} outside 0..{upper}")
    return value


def parse_pck_extension(der: bytes) -> PckExtension:
    """Parse the DER value of the SGX extension (OID 1.2.840.113741.1.13.1).

    Unknown entries are ignored (Intel may add some); required ones missing,
    duplicated or malformed raise :class:`~trustedml.errors.EvidenceFormatError`.
    """
    top = _der.read_single(der, _der.SEQUENCE, "PCK SGX extension")
    entries = _oid_value_pairs(top, "PCK SGX extension")
    tcb_value = _required(entries, _TCB, "TCB").expect(_der.SEQUENCE, "PCK SGX extension TCB")
    tcb = _oid_value_pairs(tcb_value, "PCK SGX extension TCB")
    components = tuple(
        _bounded_int(
            _required(tcb, f"{_TCB}.{i}", f"TCB component {i} SVN"),
            _der.INTEGER,
            0xFF,
            f"PCK TCB component {i} SVN",
        )
        for i in range(1, 17)
    )
    flags: dict[str, bool] = {}
    if _CONFIGURATION in entries:
        config = _oid_value_pairs(
            entries[_CONFIGURATION].expect(_der.SEQUENCE, "PCK configuration"),
            "PCK configuration",
        )
        for oid, name in _CONFIG_FLAGS.items():
            if oid in config:
                flags[name] = _der.decode_boolean(
                    config[oid].expect(_der.BOOLEAN, f"PCK configuration {name}"),
                    f"PCK configuration {name}",
                )
    instance = entries.get(_PLATFORM_INSTANCE_ID)
    return PckExtension(
        ppid=_octets(_required(entries, _PPID, "PPID"), 16, "PCK PPID"),
        tcb_components=components,
        pce_svn=_bounded_int(_required(tcb, _PCESVN, "PCESVN"), _der.INTEGER, 0xFFFF, "PCK PCESVN"),
        cpusvn=_octets(_required(tcb, _CPUSVN, "CPUSVN"), 16, "PCK CPUSVN"),
        pce_id=_octets(_required(entries, _PCE_ID, "PCE-ID"), 2, "PCK PCE-ID"),
        fmspc=_octets(_required(entries, _FMSPC, "FMSPC"), 6, "PCK FMSPC"),
        sgx_type=_bounded_int(
            _required(entries, _SGX_TYPE, "SGX type"), _der.ENUMERATED, 0xFF, "PCK SGX type"
        ),
        platform_instance_id=(
            None if instance is None else _octets(instance, 16, "PCK platform instance ID")
        ),
        dynamic_platform=flags.get("dynamic_platform"),
        cached_keys=flags.get("cached_keys"),
        smt_enabled=flags.get("smt_enabled"),
    )
