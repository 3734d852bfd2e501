"""Issue 11: every entry of a folder accounted for, no endless loops, no tracebacks.

A folder built to be hostile (a symlink loop, a name that is not UTF-8, a sub-folder that cannot be listed, a FIFO,
a dangling link, links to folders inside and outside it, a link to a file outside it, a JPEG whose header claims
far more pixels than it holds, a float TIFF) goes through ``gamma-scan`` in-process on SQLite with the tiny test
checkpoint: the scan completes, and every entry ends with a verdict or a recorded reason.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from gamma.preprocess import ImageRejected, preprocess
from gamma.weights import Checkpoint
from worker import storage
from worker.cli import scan
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.storage import LocalSource

VERDICT = "verdict"


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def patched_header_jpeg() -> bytes:
    """A small baseline JPEG whose frame header says 60000x1300: libjpeg decodes it to uniform grey, no error."""
    data = bytearray(jpeg((200, 40, 40)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 1300, 60000)
    return bytes(data)


def float_rgb_tiff(width: int = 4, height: int = 3) -> bytes:
    """An uncompressed little-endian TIFF of 3 x 32-bit IEEE float samples per pixel (Pillow cannot open it)."""
    pixels = struct.pack(f"<{width * height * 3}f", *([0.25] * (width * height * 3)))
    entries = 11
    ifd_size = 2 + 12 * entries + 4
    arrays = 8 + ifd_size  # BitsPerSample and SampleFormat: 3 SHORTs each, after the IFD
    strip = arrays + 12
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, arrays),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, strip),
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
        (284, 3, 1, 1),
        (339, 3, 3, arrays + 6),
    ]
    ifd = struct.pack("<H", entries)
    for tag, kind, count, value in tags:
        inline = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + inline
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<6H", 32, 32, 32, 3, 3, 3) + pixels


def test_the_corrupt_images_are_rejected_with_a_useful_detail() -> None:
    with pytest.raises(ImageRejected) as patched:
        preprocess(patched_header_jpeg())
    assert patched.value.reason == "truncated" and "60000x1300" in patched.value.detail
    with pytest.raises(ImageRejected) as tiff:
        preprocess(float_rgb_tiff())
    assert tiff.value.reason == "unsupported-format", tiff.value
    assert "32-bit floating-point" in tiff.value.detail and " object at 0x" not in tiff.value.detail
    with pytest.raises(ImageRejected) as garbage:
        preprocess(b"II*\x00" + b"\xff" * 64)  # a TIFF signature and nothing that parses
    assert " object at 0x" not in garbage.value.detail and "TIFF" in garbage.value.detail


# key -> what it must end with: VERDICT, or the error reason recorded for it
EXPECTED = {
    "good.jpg": VERDICT,
    "real/a.jpg": VERDICT,
    "real/b.jpg": VERDICT,
    "inside-link.jpg": VERDICT,  # a link to good.jpg: read through it (the same bytes: its result is reused)
    "loop.jpg": "symlink-loop",
    "bad\\xff\\xfename.jpg": "non-utf8-name",
    "locked/": "access-denied",
    "fifo.jpg": "not-a-file",
    "dangling.jpg": "dangling-link",
    "linked/": "linked-folder",  # -> real/: its files are listed there, once
    "outside": "outside-root",  # -> a folder of 21 images outside the scanned one: refused, never followed
    "passwd.jpg": "outside-root",  # -> a file outside: refused, and never even stat'ed
    "patched.jpg": "truncated",
    "float.tiff": "unsupported-format",
}


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "D"
    (folder / "real").mkdir(parents=True)
    (folder / "good.jpg").write_bytes(jpeg((30, 160, 30)))
    (folder / "real" / "a.jpg").write_bytes(jpeg((10, 10, 200)))
    (folder / "real" / "b.jpg").write_bytes(jpeg((220, 220, 10)))
    (folder / "inside-link.jpg").symlink_to("good.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    with open(os.path.join(os.fsencode(folder), b"bad\xff\xfename.jpg"), "wb") as file:
        file.write(jpeg((1, 2, 3)))
    locked = folder / "locked"
    locked.mkdir()
    (locked / "hidden.jpg").write_bytes(jpeg((9, 9, 9)))
    locked.chmod(0)
    if os.geteuid() == 0:  # permission bits do not stop root: make the folder unlistable for the walk itself
        real_scandir = os.scandir

        def scandir(path: str) -> object:
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(storage.os, "scandir", scandir)
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dangling.jpg").symlink_to("nowhere.jpg")
    (folder / "linked").symlink_to("real", target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for index in range(21):
        (elsewhere / f"{index}.jpg").write_bytes(jpeg((index * 10, 50, 50)))
    (folder / "outside").symlink_to(elsewhere, target_is_directory=True)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"s" * 4321)
    (folder / "passwd.jpg").symlink_to(secret)
    (folder / "patched.jpg").write_bytes(patched_header_jpeg())
    (folder / "float.tiff").write_bytes(float_rgb_tiff())
    yield folder
    locked.chmod(0o755)


def _entries(folder: Path) -> int:
    """Directory entries that are not folders the walk goes into (each must end as one row)."""
    count = 0
    for path, dirs, files in os.walk(os.fsencode(folder)):
        count += len(files) + sum(1 for name in dirs if os.path.islink(os.path.join(path, name)) or name == b"locked")
        dirs[:] = [name for name in dirs if name != b"locked"]
    return count


def test_every_entry_of_a_hostile_folder_ends_with_a_verdict_or_a_reason(
    hostile: Path, tmp_path: Path, tiny_checkpoint: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GAMMA_TRITON_URL", raising=False)
    assert _entries(hostile) == len(EXPECTED)
    db = f"sqlite:///{tmp_path / 'hostile.db'}"
    args = [str(hostile), "--db", db, "--json", "--model", str(tiny_checkpoint.path), "--masks", str(tmp_path / "m")]
    result = CliRunner().invoke(scan, [*args, "--chunk-size", "4"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    lines = {line["key"]: line for line in map(json.loads, result.stdout.splitlines())}
    got = {key: VERDICT if line["verdict"] != "error" else line["error_reason"] for key, line in lines.items()}
    assert got == EXPECTED
    assert all(line["error_detail"] and " object at 0x" not in line["error_detail"] for line in lines.values()
               if line["verdict"] == "error")  # fmt: skip
    with session_factory(make_engine(db))() as session:
        row = session.scalars(select(Scan)).one()
        items = session.execute(
            select(ScanItem.key, Result.verdict, Result.error_reason).join(Result, Result.id == ScanItem.result_id)
        ).all()
    assert (row.status, row.total, row.processed) == ("done", len(EXPECTED), len(EXPECTED))
    assert row.errors == sum(expected != VERDICT for expected in EXPECTED.values())
    assert len(items) == len(EXPECTED)  # rows (verdicts and recorded reasons) == entries
    # The refused link kept its own metadata: the 4321-byte file it points at was never stat'ed through it.
    passwd = lines["passwd.jpg"]
    assert passwd["size"] == os.lstat(hostile / "passwd.jpg").st_size != 4321


def test_the_listing_never_stats_through_a_refused_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 999)
    root = tmp_path / "root"
    root.mkdir()
    (root / "x.jpg").symlink_to(outside)
    (ref,) = LocalSource(root).list()
    link = os.lstat(root / "x.jpg")
    assert (ref.reason, ref.size, ref.etag) == ("outside-root", link.st_size, f"{link.st_mtime_ns:x}-{link.st_size:x}")


def test_a_fifo_that_appears_after_the_listing_is_refused_without_blocking(tmp_path: Path) -> None:
    from worker.storage import ObjectRef, ObjectUnreadable

    os.mkfifo(tmp_path / "late.jpg")
    with pytest.raises(ObjectUnreadable) as refused:
        LocalSource(tmp_path).get(ObjectRef("late.jpg"), max_bytes=0)  # would block forever if opened blocking
    assert refused.value.reason == "not-a-file"


def test_a_bind_mount_style_folder_loop_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that is its own ancestor (a bind mount) is listed once, then recorded as a loop."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.jpg").write_bytes(b"1")
    real_scandir = os.scandir
    real_stat = os.DirEntry.stat

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self.entry = entry
            self.path, self.name = entry.path, entry.name

        def stat(self, follow_symlinks: bool = True) -> os.stat_result:
            if self.name == "a":  # pretend a/ is the root itself, mounted again below it
                return os.stat(tmp_path)
            return real_stat(self.entry, follow_symlinks=follow_symlinks)

    class Scandir:
        def __init__(self, path: str) -> None:
            self.entries = real_scandir(path)

        def __enter__(self) -> Iterator[Entry]:
            return (Entry(entry) for entry in self.entries)

        def __exit__(self, *exc: object) -> None:
            self.entries.close()

    monkeypatch.setattr(storage.os, "scandir", Scandir)
    refs = list(LocalSource(tmp_path).list())
    assert [(r.key, r.reason) for r in refs] == [("a/", "folder-loop")]
