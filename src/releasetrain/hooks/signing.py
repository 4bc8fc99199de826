"""Who signs: a key held in a connection (the demo), or a key that never leaves a PKCS#11
token (SoftHSM2 in the tests, an HSM or a cloud KMS's PKCS#11 library in production).

Both give a *signer*: ``sign(data) -> bytes`` (Ed25519) and ``public_key()``. The core's
signing functions (bundles, evidence, checkpoints) take any signer, so they never learn
where the key lives.

A PKCS#11 connection names the library, the token and the key, and holds the user PIN
as its password; the private key is generated on the token as sensitive and not
extractable (``releasetrain key generate-pkcs11``), so no task ever holds it::

    {"conn_type": "generic", "password": "<user PIN>",
     "extra": {"pkcs11": {"module": "/usr/lib/softhsm/libsofthsm2.so",
                          "token": "releasetrain", "key": "bundle"},
               "public_key": "-----BEGIN PUBLIC KEY-----..."}}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from releasetrain.core.bundle import BundleError, load_private_key

ED25519_OID = "1.3.101.112"
# Every use of a token opens, logs in, acts and closes under one lock: PKCS#11 login is
# per application, so sessions of two threads would log each other out, and no session
# stays open for a forked child to inherit (the scheduler signs checkpoints, then forks
# executor workers; a child re-initialising over a parent's open session fails). After a
# fork the child starts over: a new lock and its own initialisation.
_LOCK = threading.Lock()
_INITIALISED_IN: dict[str, int] = {}  # library -> pid that initialised it
OPEN_ATTEMPTS = 5  # tries to find a token that another process was writing (see Pkcs11Signer._use)


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a lock held by another thread at fork time is never released here


os.register_at_fork(after_in_child=_after_fork_in_child)


def _library(module: str):
    """The PKCS#11 library (called with ``_LOCK`` held), initialised in this process."""
    try:
        import pkcs11
    except ImportError:  # pragma: no cover - a dependency of the package
        raise BundleError("PKCS#11 signing needs the python-pkcs11 package") from None
    if not os.path.isfile(module):
        raise BundleError(f"PKCS#11 library {module} does not exist")
    lib = pkcs11.lib(module)
    if _INITIALISED_IN.setdefault(module, os.getpid()) != os.getpid():
        lib.reinitialize()  # a forked process cannot use its parent's state
        _INITIALISED_IN[module] = os.getpid()
    return lib


class Pkcs11Signer:
    """An Ed25519 key on a PKCS#11 token: signs there, hands out only its public key."""

    def __init__(self, module: str, token: str, key: str, pin: str, conn_id: str = "") -> None:
        self.module, self.token, self.key, self.conn_id = os.path.realpath(module), token, key, conn_id
        self._pin = pin

    def __repr__(self) -> str:  # never the PIN
        return f"Pkcs11Signer(token={self.token!r}, key={self.key!r})"

    def _use(self, action):
        """Open a session (logged in with this signer's PIN), run ``action(session)``, close it;
        all under the process's one lock."""
        import pkcs11

        with _LOCK:
            for attempt in range(OPEN_ATTEMPTS):
                lib = _library(self.module)
                try:
                    session = lib.get_token(token_label=self.token).open(user_pin=self._pin)
                    break
                except (pkcs11.exceptions.NoSuchToken, pkcs11.exceptions.TokenNotPresent) as exc:  # type: ignore[attr-defined]
                    # a file-backed token (SoftHSM) that another process was writing when this one
                    # listed the slots stays missing until the library lists them again
                    if attempt == OPEN_ATTEMPTS - 1:
                        raise BundleError(self._unopened(exc)) from None
                    time.sleep(0.2 * (attempt + 1))
                    lib.reinitialize()
                except (pkcs11.exceptions.PKCS11Error, StopIteration) as exc:  # type: ignore[attr-defined]
                    raise BundleError(self._unopened(exc)) from None
            with session:
                return action(session)

    def _unopened(self, exc: BaseException) -> str:
        return f"PKCS#11 token {self.token!r} ({self.conn_id or 'signer'}) cannot be opened: {type(exc).__name__}"

    def _object(self, session, object_class):
        import pkcs11

        try:
            return session.get_key(object_class=object_class, key_type=pkcs11.KeyType.EC_EDWARDS, label=self.key)
        except (pkcs11.exceptions.NoSuchKey, pkcs11.exceptions.MultipleObjectsReturned) as exc:
            raise BundleError(
                f"PKCS#11 token {self.token!r} has no single Ed25519 key labelled {self.key!r}: {type(exc).__name__}"
            ) from None

    def sign(self, data: bytes) -> bytes:
        import pkcs11

        def sign(session) -> bytes:
            private = self._object(session, pkcs11.ObjectClass.PRIVATE_KEY)
            return bytes(private.sign(data, mechanism=pkcs11.Mechanism.EDDSA))

        return self._use(sign)

    def public_key(self) -> Ed25519PublicKey:
        import pkcs11

        def point(session) -> bytes:
            return bytes(self._object(session, pkcs11.ObjectClass.PUBLIC_KEY)[pkcs11.Attribute.EC_POINT])

        return Ed25519PublicKey.from_public_bytes(_unwrap_point(self._use(point)))

    def private_key_exposed(self) -> bool:
        """Whether the token would hand out the private key (it must not)."""
        import pkcs11

        def exposed(session) -> bool:
            private = self._object(session, pkcs11.ObjectClass.PRIVATE_KEY)
            return bool(private[pkcs11.Attribute.EXTRACTABLE]) or not private[pkcs11.Attribute.SENSITIVE]

        return self._use(exposed)


def _unwrap_point(point: bytes) -> bytes:
    """EC_POINT of an Edwards key: the 32 raw bytes, or the same as a DER OCTET STRING."""
    if len(point) == 34 and point[0] == 0x04 and point[1] == 32:
        return point[2:]
    if len(point) == 32:
        return point
    raise BundleError(f"not an Ed25519 public key on the token ({len(point)} bytes)")


SIGNING_CONN_TYPE = "releasetrain_signing"


def pem_key_connection(private_pem: str, conn_type: str = SIGNING_CONN_TYPE) -> dict[str, Any]:
    """A signing key connection: the private key (password) and its pinned public key (extra)."""
    from releasetrain.core.bundle import public_key_pem

    public = public_key_pem(load_private_key(private_pem))
    return {"conn_type": conn_type, "password": private_pem, "extra": {"public_key": public}}


def extra_field(extra: Mapping[str, Any], name: str) -> Any:
    """A signing connection's extra field, as a JSON extra names it or as Airflow's connection
    form stores its ``releasetrain_signing`` fields (``extra__releasetrain_signing__<name>``)."""
    value = extra.get(name)
    return value if value not in (None, "") else extra.get(f"extra__{SIGNING_CONN_TYPE}__{name}")


def signer_from(conn: Any, conn_id: str) -> Any:
    """The signer a key connection configures: a PKCS#11 key (``extra.pkcs11``) or a PEM
    private key in the password (or ``extra.private_key``)."""
    extra: Mapping[str, Any] = conn.extra_dejson if conn is not None else {}
    token = extra_field(extra, "pkcs11")
    if isinstance(token, str) and token.strip():  # typed into the connection form: JSON text
        import json

        try:
            token = json.loads(token)
        except ValueError:
            raise BundleError(f"connection {conn_id!r}: the PKCS#11 key is not JSON (module, token, key)") from None
    if token:
        missing = [k for k in ("module", "token", "key") if not (isinstance(token, Mapping) and token.get(k))]
        if missing:
            raise BundleError(f"connection {conn_id!r}: extra.pkcs11 lacks {', '.join(missing)}")
        if not conn.password:
            raise BundleError(f"connection {conn_id!r}: the token's user PIN goes in the password field")
        return Pkcs11Signer(str(token["module"]), str(token["token"]), str(token["key"]), conn.password, conn_id)
    pem = conn is not None and (conn.password or extra_field(extra, "private_key"))
    if not pem:
        raise BundleError(f"connection {conn_id!r} holds no private key (password field) and names no PKCS#11 key")
    return load_private_key(pem)


def generate_pkcs11_key(module: str, token: str, key: str, pin: str) -> Ed25519PublicKey:
    """Generate an Ed25519 key pair on a token: the private half sensitive, not extractable."""
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    signer = Pkcs11Signer(module, token, key, pin)
    with _LOCK, _library(signer.module).get_token(token_label=token).open(user_pin=pin, rw=True) as session:
        existing = list(session.get_objects({pkcs11.Attribute.LABEL: key}))
        if existing:
            raise BundleError(f"token {token!r} already holds a key labelled {key!r}")
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC_EDWARDS,
            {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)},
            local=True,
        )
        params.generate_keypair(
            store=True,
            label=key,
            mechanism=pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            private_template={pkcs11.Attribute.SENSITIVE: True, pkcs11.Attribute.EXTRACTABLE: False},
        )
    return signer.public_key()
