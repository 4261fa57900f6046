"""tasks/system/signing.py and signed publication: keys generated here, checked with gpgv."""

import json
import subprocess

import pytest

from tasks import actions, published
from tasks.commands import verify as verify_command
from tasks.model import plan
from tasks.stages import publish as publication
from tasks.storage import Location
from tasks.system import signing

from .conftest import REPO, make_key
from .test_storage import SUFFIXES

DAILY = "bookworm/daily/20261125-1200"
IMAGE = "debian-12-nocloud-amd64-20261125-1200"


def publish(cell, files, root, tmp_path):
    from .test_storage import FAST

    return publication.publish(cell, files, Location(root.as_uri()), FAST)


def test_a_published_daily_is_signed_and_gpgv_accepts_it(nocloud, signing_env, tmp_path):
    cell, files = nocloud
    receipt = publish(cell, files, tmp_path / "public", tmp_path)
    daily = tmp_path / "public" / DAILY
    keyring = tmp_path / "keyring.gpg"
    subprocess.run(["gpg", "--dearmor", "--output", str(keyring), str(signing_env.public)], check=True)
    # What docs/storage.md tells a user to run.
    good = subprocess.run(["gpgv", "--keyring", str(keyring), "SHA512SUMS.asc", "SHA512SUMS"], cwd=daily)
    assert good.returncode == 0
    assert receipt["signed_by"] == signing_env.fingerprint
    # One changed byte in SHA512SUMS: gpgv refuses it.
    sums = daily / "SHA512SUMS"
    sums.write_text(sums.read_text().replace("a", "b", 1))
    bad = subprocess.run(["gpgv", "--keyring", str(keyring), "SHA512SUMS.asc", "SHA512SUMS"], cwd=daily)
    assert bad.returncode != 0


def test_a_daily_without_a_key_is_published_unsigned_with_a_warning(nocloud, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    monkeypatch.delenv(signing.FINGERPRINT_ENV, raising=False)
    cell, files = nocloud
    receipt = publish(cell, files, tmp_path / "public", tmp_path)
    assert "warning: no signing key" in capsys.readouterr().out
    assert receipt["signed_by"] is None
    assert not (tmp_path / "public" / DAILY / "SHA512SUMS.asc").exists()
    envelope = json.loads((tmp_path / "public" / DAILY / f"{IMAGE}.intoto.json").read_text())
    assert envelope["signatures"] == []


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({signing.KEY_ENV: "{secret}"}, f"{signing.KEY_ENV} is set but {signing.FINGERPRINT_ENV} is not"),
        ({signing.FINGERPRINT_ENV: "{fingerprint}"}, f"{signing.FINGERPRINT_ENV} is set but {signing.KEY_ENV} is not"),
        ({signing.KEY_ENV: "/nonexistent/key.asc", signing.FINGERPRINT_ENV: "{fingerprint}"}, "is not a file"),
        ({signing.KEY_ENV: "{secret}", signing.FINGERPRINT_ENV: "12AB"}, "expected 40 or 64 hexadecimal digits"),
        (
            {signing.KEY_ENV: "{secret}", signing.FINGERPRINT_ENV: "A" * 40},
            f"not {signing.FINGERPRINT_ENV}=" + "A" * 40,
        ),
        ({signing.KEY_ENV: "{public}", signing.FINGERPRINT_ENV: "{fingerprint}"}, "holds no secret key"),
        ({signing.KEY_ENV: "{garbage}", signing.FINGERPRINT_ENV: "{fingerprint}"}, "holds no usable OpenPGP key"),
    ],
)
def test_a_wrong_key_configuration_is_one_clear_error(test_key, tmp_path, environment, message):
    garbage = tmp_path / "garbage.asc"
    garbage.write_text("not a key\n")
    values = {"secret": test_key.secret, "public": test_key.public, "fingerprint": test_key.fingerprint}
    env = {name: value.format(**values, garbage=garbage) for name, value in environment.items()}
    with pytest.raises(signing.SigningError) as caught:
        with signing.configured_signer(env):
            pass
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_expired_key_is_refused(tmp_path):
    key = make_key(tmp_path / "old", expire="seconds=1")
    import time

    time.sleep(2)
    with pytest.raises(signing.SigningError, match=f"the signing key {key.fingerprint} expired"):
        with signing.configured_signer(key.environment()):
            pass


def test_the_provenance_envelope_and_checksums_verify_with_doit_verify(nocloud, signing_env, tmp_path):
    cell, files = nocloud
    publish(cell, files, tmp_path / "public", tmp_path)
    the_plan = plan.from_options(REPO, {"storage": (tmp_path / "public").as_uri(), "workdir": str(tmp_path)}.get)
    checked = published.verify(the_plan, "bookworm-nocloud-amd64@20261125-1200", signing_env.public)
    assert any("signature good" in line for line in checked)
    assert sum("as SHA512SUMS lists" in line for line in checked) == len(SUFFIXES)

    # Another key's public half does not verify either signature.
    other = make_key(tmp_path / "other", name="Someone else")
    with pytest.raises(signing.SigningError, match="the signature does not verify"):
        published.verify(the_plan, "bookworm-nocloud-amd64@20261125-1200", other.public)

    # A tampered image file is found by its digest.
    image = tmp_path / "public" / DAILY / f"{IMAGE}.qcow2"
    image.write_bytes(image.read_bytes() + b"x")
    with pytest.raises(signing.SigningError, match=f"{IMAGE}.qcow2: SHA-512"):
        published.verify(the_plan, "bookworm-nocloud-amd64@20261125-1200", signing_env.public)


def _published_anew(public, name, text):
    """A file replaced as a faulty publisher would: listed in SHA512SUMS, signed with the key."""
    from tasks.system.checksum import format_sums, parse_sums, sha512_file

    (public / name).write_text(text)
    sums = parse_sums((public / "SHA512SUMS").read_text())
    sums[name] = sha512_file(public / name)
    (public / "SHA512SUMS").write_text(format_sums(sums))
    with signing.configured_signer() as signer:
        assert signer is not None
        (public / "SHA512SUMS.asc").write_bytes(signer.sign_detached((public / "SHA512SUMS").read_bytes()))


def _envelope_of_another_shape(public):
    _published_anew(public, f"{IMAGE}.intoto.json", '{"payload": 5}')


def _statement_of_another_shape(public):
    with signing.configured_signer() as signer:
        statement = b'{"predicateType": "https://slsa.dev/provenance/v1", "subject": 7}'
        assert signer is not None
        envelope = signer.sign_envelope(statement, "application/vnd.in-toto+json")
    _published_anew(public, f"{IMAGE}.intoto.json", json.dumps(envelope))


@pytest.mark.parametrize(
    "damage, given, message",
    [
        (lambda public: None, "bookworm-nothing-amd64", "'bookworm-nothing-amd64' is no cell of matrix.yaml"),
        (lambda public: None, "bookworm-nocloud-amd64@rc1", "expected a version YYYYMMDD-N"),
        (lambda public: None, "bookworm-nocloud-amd64@20261124-1", "published neither as a release nor as a daily"),
        (
            lambda public: (public / f"{IMAGE}.qcow2").unlink(),
            "bookworm-nocloud-amd64",
            f"{DAILY}/{IMAGE}.qcow2: listed in SHA512SUMS, missing from storage",
        ),
        (_envelope_of_another_shape, "bookworm-nocloud-amd64", "the provenance is not a DSSE envelope"),
        (_statement_of_another_shape, "bookworm-nocloud-amd64", "its subjects are not a list of names and digests"),
    ],
)
def test_doit_verify_says_what_is_wrong_in_one_line(nocloud, signing_env, tmp_path, damage, given, message):
    cell, files = nocloud
    publish(cell, files, tmp_path / "public", tmp_path)
    damage(tmp_path / "public" / DAILY)
    options = {
        "storage": (tmp_path / "public").as_uri(),
        "workdir": str(tmp_path / "work"),
        "image": given,
        "key": str(signing_env.public),
    }
    failure = actions.run_stage("verify", verify_command.check, plan.from_options(REPO, options.get))
    assert failure is not None and message in failure.message, failure and failure.message
    assert "\n" not in failure.message.strip()


def test_doit_verify_refuses_an_unsigned_publication(nocloud, tmp_path, monkeypatch):
    monkeypatch.delenv(signing.KEY_ENV, raising=False)
    monkeypatch.delenv(signing.FINGERPRINT_ENV, raising=False)
    cell, files = nocloud
    publish(cell, files, tmp_path / "public", tmp_path)
    options = {"storage": (tmp_path / "public").as_uri(), "workdir": str(tmp_path)}
    failure = actions.run_stage("verify", verify_command.check, plan.from_options(REPO, options.get))
    assert "doit verify needs an image and a public key" in str(failure)
    key = make_key(tmp_path / "k")
    options.update(image="bookworm-nocloud-amd64", key=str(key.public))
    failure = actions.run_stage("verify", verify_command.check, plan.from_options(REPO, options.get))
    assert f"{DAILY}/SHA512SUMS is not signed" in str(failure)


def test_publishing_again_keeps_the_envelope_until_the_key_changes(nocloud, signing_env, tmp_path, capsys, monkeypatch):
    cell, files = nocloud
    publish(cell, files, tmp_path / "public", tmp_path)
    envelope = (tmp_path / "public" / DAILY / f"{IMAGE}.intoto.json").read_bytes()
    capsys.readouterr()
    publish(cell, files, tmp_path / "public", tmp_path)
    assert f"{IMAGE}.intoto.json: already published, unchanged" in capsys.readouterr().out
    assert (tmp_path / "public" / DAILY / f"{IMAGE}.intoto.json").read_bytes() == envelope
    other = make_key(tmp_path / "other", name="Next year's key")
    for name, value in other.environment().items():
        monkeypatch.setenv(name, value)
    publish(cell, files, tmp_path / "public", tmp_path)
    resigned = json.loads((tmp_path / "public" / DAILY / f"{IMAGE}.intoto.json").read_text())
    assert [s["keyid"] for s in resigned["signatures"]] == [other.fingerprint.lower()]
