"""Issue 11, keys kept apart: signing through PKCS#11, so that no task holds a private key.

A real SoftHSM2 token (Debian's softhsm2, installed by scripts/ensure-debian.sh) in a
temporary folder: `releasetrain key generate-pkcs11` makes each key on the token, the
package operator, the evidence export and the ledger checkpoint sign there, and verifiers
check against the pinned public key. The end-to-end stack signs the same way.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from releasetrain.cli import main as cli
from releasetrain.core.bundle import BundleError, load_public_key, signing_statement
from releasetrain.devstack import PKCS11_TOKEN, SOFTHSM_MODULE, pkcs11_connection
from releasetrain.hooks.bundle_store import SigningKeyHook
from releasetrain.hooks.signing import Pkcs11Signer
from tests.conftest import PROJECT_ROOT
from tests.helpers import FakeTI, context, seed

PIN = "releasetrain-test-pin"

pytestmark = pytest.mark.skipif(
    not Path(SOFTHSM_MODULE).exists(), reason="SoftHSM2 is not installed (make test installs it)"
)


@pytest.fixture(scope="module")
def token(tmp_path_factory):
    """A fresh token with three keys generated on it; their public halves, as PEM."""
    home = tmp_path_factory.mktemp("softhsm")
    (home / "tokens").mkdir()
    conf = home / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {home / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # read once, when this process first loads the library
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", PKCS11_TOKEN, "--pin", PIN, "--so-pin", "8765"],
        check=True,
        capture_output=True,
    )
    keys = {}
    for label in ("bundle", "evidence", "ledger"):
        done = subprocess.run(
            [sys.executable, "-m", "releasetrain", "key", "generate-pkcs11", "--module", SOFTHSM_MODULE,
             "--token", PKCS11_TOKEN, "--label", label, "--out", str(home / f"{label}.pem")],
            env={**os.environ, "RELEASETRAIN_PKCS11_PIN": PIN},
            capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert '"pkcs11"' in done.stdout and PIN not in done.stdout + done.stderr
        keys[label] = (home / f"{label}.pem").read_text()
        assert keys[label].startswith("-----BEGIN PUBLIC KEY-----")
    yield keys
    if previous is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = previous


def use(monkeypatch, conn_id: str, label: str, public_pem: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", pkcs11_connection(PIN, label, public_pem))


def test_the_private_key_never_leaves_the_token(token):
    signer = Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", PIN)
    assert not signer.private_key_exposed(), "generated sensitive and not extractable"
    signature = signer.sign(b"statement")
    load_public_key(token["bundle"]).verify(signature, b"statement")  # raises if not
    # a second key on the token is a different key: keys are apart
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidSignature
        load_public_key(token["evidence"]).verify(signature, b"statement")
    # the key cannot be made twice, and the CLI never takes the PIN as an argument
    again = subprocess.run(
        [sys.executable, "-m", "releasetrain", "key", "generate-pkcs11", "--module", SOFTHSM_MODULE,
         "--token", PKCS11_TOKEN, "--label", "bundle", "--out", os.devnull],
        env={**os.environ, "RELEASETRAIN_PKCS11_PIN": PIN}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 1 and "already holds a key labelled 'bundle'" in again.stderr
    assert "PIN" not in repr(signer) and PIN not in repr(signer)


def test_a_wrong_pin_or_key_label_is_a_clear_error(token):
    with pytest.raises(BundleError, match="token 'releasetrain' .* cannot be opened: PinIncorrect"):
        Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", "not-the-pin").sign(b"x")
    with pytest.raises(BundleError, match="no single Ed25519 key labelled 'nope'"):
        Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "nope", PIN).sign(b"x")


def test_packaging_signs_on_the_token_and_verifies_with_the_pinned_key(token, monkeypatch, tmp_path):
    from releasetrain.operators.package import BundlePackageOperator
    from releasetrain.operators.verify import BundleVerifyOperator

    use(monkeypatch, "releasetrain_signing", "bundle", token["bundle"])
    with pytest.raises(BundleError, match="holds no private key"):
        SigningKeyHook().private_key()  # the connection has a PIN, not a key
    store = f"file://{tmp_path / 'artifacts'}"
    components = [{"name": "web", "source": "include/demo_fleet/artifacts/storefront-web"}]
    packaged = BundlePackageOperator(
        task_id="package", release="storefront", components=components, project_root=str(PROJECT_ROOT),
        artifact_store=store,
    ).execute(context(FakeTI(), task_id="package"))  # fmt: skip
    document = json.loads((tmp_path / "artifacts" / "storefront" / "2.0.0" / "bundle.sig.json").read_text())
    statement = signing_statement("storefront", "2.0.0", packaged["digest"], packaged["archive_sha256"])
    load_public_key(token["bundle"]).verify(base64.b64decode(document["signature"]), statement)
    assert document["public_key"] == token["bundle"]
    verified = BundleVerifyOperator(
        task_id="dev.verify", release="storefront", environment="dev", artifact_store=store
    ).execute(context(FakeTI({"package": packaged}), task_id="dev.verify"))
    assert verified["digest"] == packaged["digest"]
    # pinned to another key (say, the evidence key): the same bundle is refused
    use(monkeypatch, "releasetrain_signing", "bundle", token["evidence"])
    with pytest.raises(Exception, match="signature"):
        BundleVerifyOperator(
            task_id="dev.verify", release="storefront", environment="dev", artifact_store=store
        ).execute(context(FakeTI({"package": packaged}), task_id="dev.verify"))


def test_evidence_and_checkpoints_sign_on_the_token(token, monkeypatch, tmp_path, capsys):
    use(monkeypatch, "releasetrain_evidence_signing", "evidence", token["evidence"])
    use(monkeypatch, "releasetrain_ledger_signing", "ledger", token["ledger"])
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__LEDGER_CHECKPOINTS", f"file://{tmp_path / 'checkpoints'}")
    seed("triggered", actor="author", version="2.0.0")
    seed("approval_given", actor="approver", environment="prod", task_id="prod.approve")
    assert cli(["ledger", "checkpoint"]) == 0
    (tmp_path / "ledger.pem").write_text(token["ledger"])
    (tmp_path / "evidence.pem").write_text(token["evidence"])
    assert cli(["ledger", "verify", "--public-key", str(tmp_path / "ledger.pem")]) == 0
    assert "anchored" in capsys.readouterr().out
    out = tmp_path / "evidence.json"
    assert cli(["evidence", "storefront", "manual__test", "--out", str(out)]) == 0
    assert cli(["evidence", "verify", str(out), "--public-key", str(tmp_path / "evidence.pem")]) == 0
    # the ledger's key does not verify evidence, nor the evidence key checkpoints
    assert cli(["evidence", "verify", str(out), "--public-key", str(tmp_path / "ledger.pem")]) == 1
    assert cli(["ledger", "verify", "--public-key", str(tmp_path / "evidence.pem")]) == 1


def _sign_in_child(queue) -> None:
    try:
        queue.put(Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", PIN).sign(b"child"))
    except Exception as exc:  # reported to the parent
        queue.put(repr(exc))


def test_a_forked_process_signs_after_its_parent_did(token):
    """Airflow forks task processes: a child must not reuse its parent's PKCS#11 state."""
    Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", PIN).sign(b"parent")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_sign_in_child, args=(queue,))
    child.start()
    result = queue.get(timeout=60)
    child.join(60)
    assert isinstance(result, bytes), result
    load_public_key(token["bundle"]).verify(result, b"child")


def test_a_fork_while_another_thread_signs_does_not_hang_the_child(token):
    """The scheduler's listener thread signs checkpoints while executors fork: a lock held at
    fork time must not be inherited held."""
    import threading

    from releasetrain.hooks import signing

    Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", PIN).sign(b"parent")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with signing._LOCK:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_sign_in_child, args=(queue,))
        child.start()
        result = queue.get(timeout=30)
        child.join(30)
    finally:
        release.set()
        holder.join()
    assert isinstance(result, bytes), result


def test_threads_sign_at_once(token):
    from concurrent.futures import ThreadPoolExecutor

    signer = Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", PIN)
    key = load_public_key(token["bundle"])
    messages = [f"m{i}".encode() for i in range(60)]
    with ThreadPoolExecutor(4) as pool:
        signatures = list(pool.map(signer.sign, messages))
    for message, signature in zip(messages, signatures, strict=True):
        key.verify(signature, message)
    # a signer that does not know the PIN does not ride on the process's login
    with pytest.raises(BundleError, match="PinIncorrect"):
        Pkcs11Signer(SOFTHSM_MODULE, PKCS11_TOKEN, "bundle", "not-the-pin").sign(b"x")


def test_a_token_missing_while_another_process_writes_it_is_looked_for_again(monkeypatch):
    """CI: SoftHSM listed its slots while another process was writing the token's files, and
    packaging failed with NoSuchToken. The library lists them again (reinitialise) before the
    signer gives up; a token that stays missing is still a clear error."""
    import pkcs11

    from releasetrain.hooks import signing

    class Session:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Lib:
        def __init__(self, missing: int):
            self.missing, self.reinitialised = missing, 0

        def get_token(self, token_label):
            if self.missing:
                self.missing -= 1
                raise pkcs11.exceptions.NoSuchToken()
            return self

        def open(self, user_pin):
            return Session()

        def reinitialize(self):
            self.reinitialised += 1

    monkeypatch.setattr(signing.time, "sleep", lambda s: None)
    lib = Lib(missing=2)
    monkeypatch.setattr(signing, "_library", lambda module: lib)
    signer = Pkcs11Signer("/nonexistent/libsofthsm2.so", "releasetrain", "release-signing", "1234")
    assert signer._use(lambda session: "signed") == "signed"
    assert lib.reinitialised == 2
    lib = Lib(missing=signing.OPEN_ATTEMPTS)
    with pytest.raises(BundleError, match="token 'releasetrain' .* cannot be opened: NoSuchToken"):
        signer._use(lambda session: "signed")
    assert "1234" not in repr(signer)
