"""Signed model versions: a registered version is trusted only if `register` signed its files.

Anyone who can write to the MLflow registry (a shared server, a copied store) can register a
version, change a file of one, or move the `champion` alias. So the register stage signs each version
it creates: an Ed25519 signature over the model's name, the version number and the SHA-256 of every
file of the version as clients download it (`MLmodel`, the Keras file, the verifier, the calibration,
everything), stored in two version tags. Clients (`sigpipe predict/verify/serve/score`) check the
signature with the public half of the key, then every downloaded file against the signed list, and
refuse with one line naming the version and the file. Registry write access is therefore not enough
to make a client accept a model: the private key, kept outside the registry, is.

The key pair lives outside the registry: by default in the workspace's `.sigpipe/` folder (the private
key mode 0600 from its creation, made by the first `register`), or where SIGPIPE_SIGNING_KEY (the
private key, for whoever registers) and SIGPIPE_VERIFY_KEY (the public key, for clients that do
not register) point. The version number is part of what is signed, so a signed version's files
copied into a new version are refused too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.workspace.errors import ModelFileError, UntrustedModelError
from tasks.workspace.files import sha256_file, write_private_file

TAG_SIGNATURE = "sigpipe.signature"  # base64 Ed25519 signature of the payload below
TAG_SIGNED_FILES = "sigpipe.signed_files"  # JSON: relative path -> SHA-256 of every file of the version
TAG_SIGNING_KEY = "sigpipe.signing_key"  # fingerprint of the public key that signed it
# On the registered model: which version each alias names as register set it, and the newest version
# register had signed then (so an old statement replayed after later versions is refused), signed.
TAG_ALIASES = "sigpipe.aliases"
TAG_ALIASES_SIGNATURE = "sigpipe.aliases_signature"
SIGNING_KEY_VARIABLE = "SIGPIPE_SIGNING_KEY"  # path of the private key file (register)
VERIFY_KEY_VARIABLE = "SIGPIPE_VERIFY_KEY"  # path of the public key file (clients)
PAYLOAD_FORMAT = 1
FINGERPRINT_CHARACTERS = 16
WRITABLE_BY_OTHERS = 0o022  # group- or world-writable mode bits
PUBLIC_FILE_MODE = 0o644
SAFE_TEXT = re.compile(r"[\w./@:+-]+")  # printed as it is; anything else is quoted
RESIGN = "re-register it with the register stage (`dvc repro --force register`), or use a version it signed"


@dataclass(frozen=True)
class KeyFiles:
    """Where the private (signing) and public (verifying) keys are read from. `public_named`: the public
    key file was chosen (SIGPIPE_VERIFY_KEY), so only it is trusted, never a private key beside it."""

    private: Path
    public: Path
    public_named: bool = False


def key_files(default_private: Path, default_public: Path, environment: Mapping[str, str] = os.environ) -> KeyFiles:
    """The key files: the workspace's defaults unless SIGPIPE_SIGNING_KEY / SIGPIPE_VERIFY_KEY name others."""
    private = Path(environment[SIGNING_KEY_VARIABLE]) if environment.get(SIGNING_KEY_VARIABLE) else default_private
    named = bool(environment.get(VERIFY_KEY_VARIABLE))
    public = Path(environment[VERIFY_KEY_VARIABLE]) if named else default_public
    return KeyFiles(private=private, public=public, public_named=named)


def shown(text: str) -> str:
    """`text` as it can be printed on one line: as it is when plain, else quoted with its escapes
    (a file name or tag from the registry may hold newlines or terminal codes)."""
    return text if SAFE_TEXT.fullmatch(text) else repr(text)


def ensure_signing_key(keys: KeyFiles) -> Any:  # -> Ed25519PrivateKey
    """The private key, created with its public half the first time (the private file 0600 from its
    creation, the public one readable, to hand to clients)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not keys.private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        keys.private.parent.mkdir(parents=True, exist_ok=True)
        write_private_file(keys.private, pem.decode("ascii"))
    key = read_private_key(keys.private)
    if not keys.public.exists():
        keys.public.parent.mkdir(parents=True, exist_ok=True)
        # Readable by all, writable by its owner only whatever the umask (a 002 umask would leave it group-writable,
        # which clients refuse).
        descriptor = os.open(keys.public, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PUBLIC_FILE_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(public_pem(key.public_key()))
        keys.public.chmod(PUBLIC_FILE_MODE)
    elif keys.public.read_bytes() != public_pem(key.public_key()):
        # Clients trust the public file: one that is not this key's half would make them trust someone else.
        raise ModelFileError(
            f"{keys.public}: not the public half of the signing key {keys.private}; remove it (the next "
            "register writes the right one) or restore the matching private key"
        )
    return key


def read_private_key(path: Path) -> Any:  # -> Ed25519PrivateKey
    """The Ed25519 private key in a PEM file, or ModelFileError naming the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ModelFileError(f"{path}: not a model signing key ({type(error).__name__})") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelFileError(f"{path}: not an Ed25519 private key")
    return key


def public_pem(public_key: Any) -> bytes:
    """The PEM text of a public key."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def read_verify_key(keys: KeyFiles) -> Any:  # -> Ed25519PublicKey
    """The public key that verifies model versions: its file, else the public half of the private key
    (the workspace that registers). Raises UntrustedModelError saying where to put it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if keys.public.exists():
        if keys.public.stat().st_mode & WRITABLE_BY_OTHERS:
            raise UntrustedModelError(
                f"{keys.public}: writable by other users, so anyone could replace the key clients trust; "
                f"make it writable by its owner only (chmod go-w {keys.public})"
            )
        try:
            key = serialization.load_pem_public_key(keys.public.read_bytes())
        except ValueError as error:
            raise UntrustedModelError(f"{keys.public}: not a model verification key ({error})") from error
        if not isinstance(key, Ed25519PublicKey):
            raise UntrustedModelError(f"{keys.public}: not an Ed25519 public key")
        return key
    if keys.private.exists() and not keys.public_named:
        return read_private_key(keys.private).public_key()
    raise UntrustedModelError(
        f"no key to check model signatures: {keys.public} does not exist. The register stage creates it; on a "
        f"client of a shared registry, set {VERIFY_KEY_VARIABLE} to the public key file of whoever registers"
    )


def fingerprint(public_key: Any) -> str:
    """A short identifier of a public key (the start of the SHA-256 of its PEM text)."""
    return hashlib.sha256(public_pem(public_key)).hexdigest()[:FINGERPRINT_CHARACTERS]


def folder_digests(folder: Path) -> dict[str, str]:
    """Relative POSIX path -> SHA-256 of every file under `folder` (links are refused: a signed
    model is plain files)."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            raise UntrustedModelError(
                f"{shown(str(path))}: a link inside a model version; a signed model holds plain files"
            )
        if path.is_file():
            digests[path.relative_to(folder).as_posix()] = sha256_file(path)
    return digests


def payload(model_name: str, version: str, files: Mapping[str, str]) -> bytes:
    """The bytes that are signed: name, version and file digests, as canonical JSON."""
    content = {"format": PAYLOAD_FORMAT, "model": model_name, "version": str(version), "files": dict(files)}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")


def signature_tags(private_key: Any, model_name: str, version: str, files: Mapping[str, str]) -> dict[str, str]:
    """The version tags that make `version` trusted: the signed file list, the signature, the key's id."""
    signature = private_key.sign(payload(model_name, version, files))
    return {
        TAG_SIGNED_FILES: json.dumps(dict(files), sort_keys=True, separators=(",", ":")),
        TAG_SIGNATURE: base64.b64encode(signature).decode("ascii"),
        TAG_SIGNING_KEY: fingerprint(private_key.public_key()),
    }


def signed_files(model_name: str, version: str, tags: Mapping[str, str], public_key: Any) -> dict[str, str]:
    """The file digests `register` signed for this version, once the signature is checked; raises
    UntrustedModelError (one line naming the version) for an unsigned or wrongly signed version."""
    from cryptography.exceptions import InvalidSignature

    label = f"{model_name} version {version}"
    if TAG_SIGNATURE not in tags or TAG_SIGNED_FILES not in tags:
        raise UntrustedModelError(f"{label} is not signed by the register stage, so it is refused; {RESIGN}")
    try:
        files = json.loads(tags[TAG_SIGNED_FILES])
        signature = base64.b64decode(tags[TAG_SIGNATURE], validate=True)
        if not isinstance(files, dict):
            raise ValueError("the signed file list is not an object")
        public_key.verify(signature, payload(model_name, version, files))
    except (InvalidSignature, ValueError, RecursionError) as error:  # RecursionError: absurdly nested JSON
        signer = shown(tags.get(TAG_SIGNING_KEY, "an unknown key"))
        raise UntrustedModelError(
            f"{label}: its signature does not match (signed by {signer}; this client trusts "
            f"{fingerprint(public_key)}), so it is refused; {RESIGN}"
        ) from error
    return {str(name): str(digest) for name, digest in files.items()}


def check_files(model_name: str, version: str, folder: Path, expected: Mapping[str, str]) -> None:
    """Every file of the downloaded version in `folder` is one that was signed, with its signed
    digest, and none is missing; else UntrustedModelError naming the version and the file."""
    label = f"{model_name} version {version}"
    found = folder_digests(folder)
    for name in sorted(set(found) | set(expected)):
        if name not in expected:
            raise UntrustedModelError(f"{label}: file {shown(name)} was not signed by the register stage; {RESIGN}")
        if name not in found:
            raise UntrustedModelError(f"{label}: signed file {shown(name)} is missing; {RESIGN}")
        if found[name] != expected[name]:
            raise UntrustedModelError(
                f"{label}: file {shown(name)} differs from the one the register stage signed; {RESIGN}"
            )


def alias_payload(model_name: str, aliases: Mapping[str, str], as_of: str) -> bytes:
    """The bytes of an alias statement: which version each alias names, as of the newest signed version."""
    content = {"format": PAYLOAD_FORMAT, "model": model_name, "aliases": dict(aliases), "as_of": str(as_of)}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")


def alias_tags(private_key: Any, model_name: str, aliases: Mapping[str, str], as_of: str) -> dict[str, str]:
    """The registered-model tags of a signed alias statement (register writes them after moving an alias)."""
    statement = {"aliases": dict(aliases), "as_of": str(as_of)}
    signature = private_key.sign(alias_payload(model_name, aliases, as_of))
    return {
        TAG_ALIASES: json.dumps(statement, sort_keys=True, separators=(",", ":")),
        TAG_ALIASES_SIGNATURE: base64.b64encode(signature).decode("ascii"),
    }


def signed_aliases(model_name: str, tags: Mapping[str, str], public_key: Any) -> tuple[dict[str, str], str] | None:
    """(alias -> version, as_of) of the model's alias statement once its signature is checked; None when
    there is none; UntrustedModelError when its signature does not match."""
    from cryptography.exceptions import InvalidSignature

    if TAG_ALIASES not in tags or TAG_ALIASES_SIGNATURE not in tags:
        return None
    try:
        statement = json.loads(tags[TAG_ALIASES])
        aliases = {str(alias): str(version) for alias, version in dict(statement["aliases"]).items()}
        as_of = str(statement["as_of"])
        public_key.verify(
            base64.b64decode(tags[TAG_ALIASES_SIGNATURE], validate=True), alias_payload(model_name, aliases, as_of)
        )
    except (InvalidSignature, ValueError, TypeError, KeyError, RecursionError) as error:
        raise UntrustedModelError(
            f"{model_name}: its alias statement's signature does not match, so no alias of it is trusted; "
            "a register run writes a new one (or load an explicit version, models:/<name>/<n>)"
        ) from error
    return aliases, as_of
