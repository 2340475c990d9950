"""Intel DCAP collateral (dcap-qvl ``QuoteCollateralV3`` JSON): the collateral
object, and the TCB info and QE identity documents Intel signs, parsed with typed
getters whose every error is a :class:`~trustedml.errors.CollateralError` naming the
JSON path and key. Parsing only: signatures and dates are checked by
:mod:`trustedml.attestation._intel`."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trustedml.errors import CollateralError

__all__ = [
    "EnclaveIdentity",
    "IdentityTcbLevel",
    "IntelCollateral",
    "TcbInfo",
    "TcbLevel",
    "TdxModuleIdentity",
    "parse_enclave_identity",
    "parse_tcb_info",
]

_SGX_COMPONENTS = 16
TDX_COMPONENTS = 16
_V2_COMPONENT_KEYS = tuple(f"sgxtcbcomp{i:02d}svn" for i in range(1, 17))


class _Json:
    # Typed getters over one JSON object; every error names the path and the key.

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise CollateralError(f"{where}: expected a JSON object, got {_kind(value)}")
        self.obj: dict[str, Any] = value
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.obj

    def raw(self, key: str) -> object:
        try:
            return self.obj[key]
        except KeyError:
            raise CollateralError(f"{self.where}: key {key!r} is missing") from None

    def str_(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise CollateralError(
                f"{self.where}: key {key!r}: expected a string, got {_kind(value)}"
            )
        return value

    def int_(self, key: str, upper: int = 2**32 - 1) -> int:
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
            raise CollateralError(
                f"{self.where}: key {key!r}: expected an integer in 0..{upper}, got {value!r}"
            )
        return value

    def hex_(self, key: str, size: int) -> bytes:
        text = self.str_(key)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise CollateralError(f"{self.where}: key {key!r}: not hex") from None
        if len(value) != size:
            raise CollateralError(
                f"{self.where}: key {key!r}: expected {size} bytes, got {len(value)}"
            )
        return value

    def date(self, key: str) -> datetime:
        text = self.str_(key)
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise CollateralError(
                f"{self.where}: key {key!r}: not an ISO 8601 date: {text!r}"
            ) from None
        if value.tzinfo is None:
            raise CollateralError(f"{self.where}: key {key!r}: date has no time zone: {text!r}")
        return value

    def list_(self, key: str) -> list[Any]:
        value = self.raw(key)
        if not isinstance(value, list):
            raise CollateralError(f"{self.where}: key {key!r}: expected a list, got {_kind(value)}")
        return value

    def obj_(self, key: str) -> _Json:
        return _Json(self.raw(key), f"{self.where}.{key}")

    def strings(self, key: str) -> tuple[str, ...]:
        if not self.has(key):
            return ()
        values = self.list_(key)
        if not all(isinstance(v, str) for v in values):
            raise CollateralError(f"{self.where}: key {key!r}: expected a list of strings")
        return tuple(values)


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _load_json(text: str | bytes, where: str) -> _Json:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CollateralError(f"{where}: not valid JSON ({exc})") from None
    return _Json(value, where)


@dataclass(frozen=True)
class TcbLevel:
    """One level of a TCB info: the minimum SVNs it needs and the status it gives."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...] | None
    status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class IdentityTcbLevel:
    """One level of an enclave or TDX module identity, selected by ISVSVN."""

    isv_svn: int
    status: str
    tcb_date: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    """The expected signer and attributes of a TDX module (``tdxModule`` or one
    ``tdxModuleIdentities`` entry, which also carries TCB levels)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[IdentityTcbLevel, ...] = ()


def _identity_levels(doc: _Json, where: str) -> tuple[IdentityTcbLevel, ...]:
    out = []
    for i, item in enumerate(doc.list_("tcbLevels")):
        level = _Json(item, f"{where}.tcbLevels[{i}]")
        out.append(
            IdentityTcbLevel(
                isv_svn=level.obj_("tcb").int_("isvsvn", 0xFFFF),
                status=level.str_("tcbStatus"),
                tcb_date=level.str_("tcbDate"),
                advisory_ids=level.strings("advisoryIDs"),
            )
        )
    if not out:
        raise CollateralError(f"{where}: key 'tcbLevels' is empty")
    return tuple(out)


def _components(doc: _Json, key: str, count: int) -> tuple[int, ...]:
    items = doc.list_(key)
    if len(items) != count:
        raise CollateralError(
            f"{doc.where}: key {key!r}: expected {count} components, got {len(items)}"
        )
    return tuple(
        _Json(item, f"{doc.where}.{key}[{i}]").int_("svn", 0xFF) for i, item in enumerate(items)
    )


@dataclass(frozen=True)
class TcbInfo:
    """Intel's TCB info for one FMSPC (PCS API TCB info v2 for SGX, v3 for SGX/TDX)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_type: int
    tcb_evaluation_data_number: int
    tcb_levels: tuple[TcbLevel, ...]
    tdx_module: TdxModuleIdentity | None = None
    tdx_module_identities: tuple[TdxModuleIdentity, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> TcbInfo:
        """Parse the exact signed ``tcbInfo`` body text (CollateralError naming the key)."""
        doc = _load_json(text, "tcb_info")
        version = doc.int_("version")
        if version == 2:
            tcb_id = "SGX"  # v2 predates TDX and has no id
        elif version == 3:
            tcb_id = doc.str_("id")
            if tcb_id not in ("SGX", "TDX"):
                raise CollateralError(f"tcb_info: key 'id': expected SGX or TDX, got {tcb_id!r}")
        else:
            raise CollateralError(f"tcb_info: key 'version': expected 2 or 3, got {version}")
        tcb_type = doc.int_("tcbType")
        if tcb_type != 0:
            raise CollateralError(f"tcb_info: key 'tcbType': only 0 is defined, got {tcb_type}")
        levels = []
        for i, item in enumerate(doc.list_("tcbLevels")):
            level = _Json(item, f"tcb_info.tcbLevels[{i}]")
            tcb = level.obj_("tcb")
            if version == 2:
                sgx = tuple(tcb.int_(key, 0xFF) for key in _V2_COMPONENT_KEYS)
                tdx = None
            else:
                sgx = _components(tcb, "sgxtcbcomponents", _SGX_COMPONENTS)
                tdx = (
                    _components(tcb, "tdxtcbcomponents", TDX_COMPONENTS)
                    if tcb_id == "TDX"
                    else None
                )
            levels.append(
                TcbLevel(
                    sgx_components=sgx,
                    pce_svn=tcb.int_("pcesvn", 0xFFFF),
                    tdx_components=tdx,
                    status=level.str_("tcbStatus"),
                    tcb_date=level.str_("tcbDate"),
                    advisory_ids=level.strings("advisoryIDs"),
                )
            )
        if not levels:
            raise CollateralError("tcb_info: key 'tcbLevels' is empty")
        module = identities = None
        if tcb_id == "TDX":
            module = _module_identity(doc.obj_("tdxModule"), "", with_levels=False)
            if doc.has("tdxModuleIdentities"):
                identities = tuple(
                    _module_identity(
                        _Json(item, f"tcb_info.tdxModuleIdentities[{i}]"), None, with_levels=True
                    )
                    for i, item in enumerate(doc.list_("tdxModuleIdentities"))
                )
        return cls(
            id=tcb_id,
            version=version,
            issue_date=doc.date("issueDate"),
            next_update=doc.date("nextUpdate"),
            fmspc=doc.hex_("fmspc", 6),
            pce_id=doc.hex_("pceId", 2),
            tcb_type=tcb_type,
            tcb_evaluation_data_number=doc.int_("tcbEvaluationDataNumber"),
            tcb_levels=tuple(levels),
            tdx_module=module,
            tdx_module_identities=identities,
        )


def _module_identity(doc: _Json, ident: str | None, *, with_levels: bool) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        id=doc.str_("id") if ident is None else ident,
        mrsigner=doc.hex_("mrsigner", 48),
        attributes=doc.hex_("attributes", 8),
        attributes_mask=doc.hex_("attributesMask", 8),
        tcb_levels=_identity_levels(doc, doc.where) if with_levels else (),
    )


@dataclass(frozen=True)
class EnclaveIdentity:
    """Intel's identity of its quoting enclave (PCS API enclave identity v2)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_levels: tuple[IdentityTcbLevel, ...]

    @classmethod
    def parse(cls, text: str) -> EnclaveIdentity:
        """Parse the exact signed ``enclaveIdentity`` body text."""
        doc = _load_json(text, "qe_identity")
        return cls(
            id=doc.str_("id"),
            version=doc.int_("version"),
            issue_date=doc.date("issueDate"),
            next_update=doc.date("nextUpdate"),
            tcb_evaluation_data_number=doc.int_("tcbEvaluationDataNumber"),
            miscselect=doc.hex_("miscselect", 4),
            miscselect_mask=doc.hex_("miscselectMask", 4),
            attributes=doc.hex_("attributes", 16),
            attributes_mask=doc.hex_("attributesMask", 16),
            mrsigner=doc.hex_("mrsigner", 32),
            isv_prod_id=doc.int_("isvprodid", 0xFFFF),
            tcb_levels=_identity_levels(doc, "qe_identity"),
        )


@dataclass(frozen=True)
class IntelCollateral:
    """The collateral for one quote, as dcap-qvl's ``QuoteCollateralV3`` JSON:
    PEM issuer chains, hex DER CRLs, the exact signed TCB info and QE identity texts
    and their hex raw r||s P-256 signatures. ``pck_certificate_chain`` (optional,
    PEM) is used only when the quote carries no PCK chain itself."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    pck_certificate_chain: str | None = None

    @classmethod
    def from_json(cls, data: bytes | str) -> IntelCollateral:
        """Parse the collateral JSON; a missing or malformed key raises CollateralError
        naming it."""
        doc = _load_json(data, "collateral")
        chain = doc.raw("pck_certificate_chain") if doc.has("pck_certificate_chain") else None
        if chain is not None and not isinstance(chain, str):
            raise CollateralError(
                f"collateral: key 'pck_certificate_chain': expected a string, got {_kind(chain)}"
            )
        return cls(
            pck_crl_issuer_chain=doc.str_("pck_crl_issuer_chain"),
            root_ca_crl=_crl_bytes(doc, "root_ca_crl"),
            pck_crl=_crl_bytes(doc, "pck_crl"),
            tcb_info_issuer_chain=doc.str_("tcb_info_issuer_chain"),
            tcb_info=doc.str_("tcb_info"),
            tcb_info_signature=doc.hex_("tcb_info_signature", 64),
            qe_identity_issuer_chain=doc.str_("qe_identity_issuer_chain"),
            qe_identity=doc.str_("qe_identity"),
            qe_identity_signature=doc.hex_("qe_identity_signature", 64),
            pck_certificate_chain=chain or None,
        )


def _crl_bytes(doc: _Json, key: str) -> bytes:
    text = doc.str_(key)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CollateralError(f"collateral: key {key!r}: expected hex DER or PEM") from None


# Parsing is a pure function of the signed text, and every quote of a platform
# shares the same collateral: parse each text once.
parse_tcb_info = functools.lru_cache(maxsize=32)(TcbInfo.parse)
parse_enclave_identity = functools.lru_cache(maxsize=32)(EnclaveIdentity.parse)
