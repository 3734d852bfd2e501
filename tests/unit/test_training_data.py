"""Loaders on small trees written here, the label table, builders, augmentations and the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gamma.model import GammaOutput
from gamma.tiling import TILE_SIZE
from training.augment import Augment
from training.config import TrainConfig
from training.data import builders, datasets, sources
from training.labels import LABELS, label_of
from training.losses import gamma_loss


def _image(path: Path, size: tuple[int, int] = (64, 48), value: int = 128, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def _mask(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[:, : size[0] // 2] = 255  # left half
    Image.fromarray(mask).save(path)
    return path


def test_label_table_is_table_one() -> None:
    assert label_of("real").cls == 0 and label_of("real").ai_spec == "none"
    assert label_of("inpaint").cls == 1 and label_of("inpaint").ai_spec == "all"
    assert label_of("inpaint").manipulation_spec == "region"
    assert label_of("inpaint_blended").ai_spec == "region"
    # TampCOCO (and the feathered paste of a real patch): real for the classifier, manipulated pixels in the mask
    for kind in ("copy_move", "splicing", "feathered_splicing"):
        assert (
            label_of(kind).cls == 0
            and label_of(kind).ai_spec == "none"
            and label_of(kind).manipulation_spec == "region"
        )
    assert {k: v.cls for k, v in LABELS.items()}["synthetic"] == 1
    with pytest.raises(KeyError, match="unknown sample kind"):
        label_of("deepfake")


def test_coco_real_inpaint_and_tampcoco_layouts(tmp_path: Path) -> None:
    _image(tmp_path / "coco" / "000001.jpg")
    _image(tmp_path / "coco" / "sub" / "000002.png")
    for stem in ("000001", "000002"):
        _image(tmp_path / "inp" / "inpainted" / f"{stem}.png")
        _image(tmp_path / "inp" / "blended" / f"{stem}.png")
        _mask(tmp_path / "inp" / "masks" / f"{stem}.png")
    for prefix in ("cm", "sp"):
        _image(tmp_path / "tamp" / f"{prefix}_images" / "a.jpg")
        _mask(tmp_path / "tamp" / f"{prefix}_masks" / "a.png")

    real = datasets.coco_real(tmp_path / "coco")
    assert [(s.image.name, s.label, s.ai_mask, s.manipulation_mask) for s in real] == [
        ("000001.jpg", 0, "none", "none"), ("000002.png", 0, "none", "none")
    ]  # fmt: skip
    inpainted = datasets.coco_inpaint(tmp_path / "inp")
    assert all(
        s.label == 1 and s.ai_mask == "all" and Path(s.manipulation_mask).parent.name == "masks" for s in inpainted
    )
    blended = datasets.coco_inpaint(tmp_path / "inp", blended=True)
    assert all(
        s.ai_mask == s.manipulation_mask and Path(s.ai_mask).name == s.image.with_suffix(".png").name for s in blended
    )
    tamp = datasets.tampcoco(tmp_path / "tamp")
    assert sorted(s.group for s in tamp) == ["copy_move", "splicing"]
    assert all(s.label == 0 and s.ai_mask == "none" and Path(s.manipulation_mask).is_file() for s in tamp)


def test_missing_mask_is_an_error(tmp_path: Path) -> None:
    _image(tmp_path / "inp" / "inpainted" / "x.png")
    with pytest.raises(FileNotFoundError, match="no mask"):
        datasets.coco_inpaint(tmp_path / "inp")


def test_manifest_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.webp", fmt="WEBP")
    _mask(tmp_path / "masks" / "b.png")
    rows = [
        {"image": "images/a.jpg", "label": 0, "ai_mask": "none", "manipulation_mask": "none"},
        {"image": "images/b.webp", "label": 1, "ai_mask": "masks/b.png", "manipulation_mask": "all", "kind": "x"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = datasets.manifest(tmp_path / "m.jsonl")
    assert (a.label, a.ai_mask, b.label, b.ai_mask, b.manipulation_mask, b.group) == (
        0, "none", 1, tmp_path / "masks" / "b.png", "all", "x"
    )  # fmt: skip
    (tmp_path / "bad.jsonl").write_text('{"image": "images/a.jpg"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        datasets.manifest(tmp_path / "bad.jsonl")


def test_genimage_and_plain_eval_layouts(tmp_path: Path) -> None:
    for generator in ("ADM", "BigGAN"):
        _image(tmp_path / "gi" / generator / "val" / "ai" / "1.png")
        _image(tmp_path / "gi" / generator / "val" / "nature" / "2.JPEG")
        _image(tmp_path / "gi" / generator / "train" / "ai" / "3.png")
    samples = datasets.genimage(tmp_path / "gi")
    assert datasets.is_genimage(tmp_path / "gi")
    assert [(s.group, s.label) for s in samples] == [("ADM", 0), ("ADM", 1), ("BigGAN", 0), ("BigGAN", 1)]
    _image(tmp_path / "plain" / "real" / "r.jpg")
    _image(tmp_path / "plain" / "ai" / "f.png")
    _image(tmp_path / "plain" / "ai" / "g.png")
    _mask(tmp_path / "plain" / "masks" / "f.png")
    plain = datasets.real_ai_folders(tmp_path / "plain")
    assert not datasets.is_genimage(tmp_path / "plain")
    assert [(s.image.name, s.label, str(s.ai_mask).endswith("f.png")) for s in plain] == [
        ("r.jpg", 0, False), ("f.png", 1, True), ("g.png", 1, False)
    ]  # fmt: skip
    assert plain[2].ai_mask == "all"


def test_dataset_follows_the_contract_and_keeps_masks_aligned(tmp_path: Path) -> None:
    """Mask pixels travel with image pixels through alignment, crop and flip; nothing is resampled: a crop larger
    than the image is zero-padded (bottom/right) around the image's own pixels."""
    image = np.zeros((256, 320, 3), np.uint8)
    image[:, :160] = 255  # left half white, like the mask
    Image.fromarray(image).save(tmp_path / "a.png")
    _mask(tmp_path / "m.png", (320, 256))
    sample = datasets.Sample(tmp_path / "a.png", 1, tmp_path / "m.png", "all")
    val = datasets.GammaDataset([sample], crop=512)
    img, label, ai, mani = val[0]
    assert img.shape == (3, 512, 512) and img.dtype == torch.uint8 and label.item() == 1.0
    assert ai.shape == mani.shape == (1, 512, 512) and mani[:, :256, :320].min() == 1.0
    assert img[:, 256:].max() == 0 and img[:, :, 320:].max() == 0 and mani[:, 256:].max() == 0  # padding only
    white = img.float().mean(0) > 127
    assert (white == (ai[0] > 0.5)).float().mean() > 0.99
    flip = Augment(blur_prob=0, jpeg_prob=0, jitter_prob=0, flip_prob=1.0)
    train = datasets.GammaDataset([sample], crop=256, train=True, augment=flip, seed=3)
    for epoch in range(3):
        train.set_epoch(epoch)
        img, _, ai, _ = train[0]
        white = img.float().mean(0) > 127
        assert img.shape == (3, 256, 256) and (white == (ai[0] > 0.5)).float().mean() > 0.98


def test_crop_labels_follow_the_pixels_a_crop_holds(tmp_path: Path) -> None:
    """With ``crop_labels`` a crop of a local AI edit that misses its region is class 0 (no network-made pixel in
    it) and one that holds any of it stays class 1; whole-image AI (mask "all") and real samples keep their class,
    and without ``crop_labels`` nothing changes (versions 1-6 of the shipped model trained that way)."""
    image = np.full((64, 256, 3), 90, np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    region = np.zeros((64, 256), np.uint8)
    region[20:40, 8:28] = 255  # a small edit at the far left
    Image.fromarray(region).save(tmp_path / "r.png")
    edit = datasets.Sample(tmp_path / "a.png", 1, tmp_path / "r.png", tmp_path / "r.png", "neural_region")
    synthetic = datasets.Sample(tmp_path / "a.png", 1, "all", "all", "synthetic")
    real = datasets.Sample(tmp_path / "a.png", 0, "none", "none", "real")
    plain = Augment(blur_prob=0, jpeg_prob=0, jitter_prob=0, flip_prob=0)
    relabelled = datasets.GammaDataset([edit, synthetic, real], crop=64, train=True, augment=plain, crop_labels=True)
    old = datasets.GammaDataset([edit, synthetic, real], crop=64, train=True, augment=plain)
    seen = {0.0: 0, 1.0: 0}
    for epoch in range(40):
        relabelled.set_epoch(epoch)
        old.set_epoch(epoch)
        _, label, ai, _ = relabelled[0]
        assert label.item() == float(ai.max().item() > 0.5)  # class 1 exactly when the crop holds AI pixels
        seen[label.item()] += 1
        assert old[0][1].item() == 1.0
        assert relabelled[1][1].item() == 1.0 and relabelled[2][1].item() == 0.0
    assert seen[0.0] > 10 and seen[1.0] > 3  # both cases occurred: the 64-px crop of a 256-px view often misses
    val = datasets.GammaDataset([edit], crop=64, crop_labels=True)  # the centre crop (columns 96-160) misses it
    assert val[0][1].item() == 0.0
    assert datasets.GammaDataset([edit], crop=64)[0][1].item() == 1.0


def test_content_only_views_keep_their_masks_and_carry_no_class(tmp_path: Path) -> None:
    """With ``content_only_prob`` a training sample is sometimes shown as the content-only control shows it (64 px
    and back, before alignment) with class target 0.5; at 0 nothing changes, and validation never sees it."""
    from training.augment import content_only

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    sample = datasets.Sample(tmp_path / "a.png", 1, "all", "all", "synthetic")
    plain = Augment(blur_prob=0, jpeg_prob=0, jitter_prob=0, flip_prob=0)
    always = datasets.GammaDataset([sample], crop=96, train=True, augment=plain, content_only_prob=1.0)
    control = datasets.GammaDataset([sample], crop=96, train=True, augment=plain, degrade=content_only(64))
    image, target, ai, _ = always[0]
    assert target.item() == 0.5 and ai.min().item() == 1.0
    assert torch.equal(image, control[0][0])  # the control's pixels, the same crop
    never = datasets.GammaDataset([sample], crop=96, train=True, augment=plain, content_only_prob=0.0)
    before = datasets.GammaDataset([sample], crop=96, train=True, augment=plain)
    some = datasets.GammaDataset([sample] * 200, crop=96, train=True, augment=plain, content_only_prob=0.25)
    assert torch.equal(never[0][0], before[0][0]) and never[0][1].item() == 1.0
    shown = sum(some.shows_content_only(i) for i in range(200))
    assert 25 < shown < 75
    assert not datasets.GammaDataset([sample], crop=96, content_only_prob=1.0).shows_content_only(0)  # validation
    with pytest.raises(ValueError, match="content_only_prob"):
        datasets.GammaDataset([sample], crop=96, content_only_prob=1.5)


def test_train_set_override_parses_booleans() -> None:
    """--set crop_labels=false must mean False (bool("false") is True)."""
    from training.train import _overrides

    config = TrainConfig()
    assert _overrides(config, ["crop_labels=true"]).crop_labels is True
    assert _overrides(_overrides(config, ["crop_labels=true"]), ["crop_labels=False"]).crop_labels is False
    with pytest.raises(ValueError, match="true or false"):
        _overrides(config, ["crop_labels=1"])


def test_contract_is_the_serving_preprocess(tmp_path: Path) -> None:
    """Evaluation's tiles are exactly what serving computes from the same bytes, in every coverage mode, and the
    masks come back at the image's own size."""
    from gamma.preprocess import preprocess

    for size in ((1300, 900), (300, 200)):
        path = _image(tmp_path / f"x{size[0]}.jpg", size)
        dataset = datasets.GammaDataset([datasets.Sample(path, 0)])
        for coverage in ("centre", "five", "full"):
            tiles, masks, label = dataset.tiles(0, coverage)
            served = preprocess(path.read_bytes(), coverage=coverage)
            assert np.array_equal(tiles.pixels, served.pixels) and tiles.plan == served.plan
            assert masks.shape == (size[1], size[0], 2) and label == 0


def test_random_masks_and_copy_move_only_move_real_pixels() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for shape in ("polygon", "ellipse", "brush"):
        mask = builders.random_mask(96, 128, rng, shape=shape)
        assert mask.any() and mask.mean() < 0.6
    edited, region = builders.copy_move(image, rng)
    assert np.array_equal(edited[~region], image[~region])  # nothing outside the destination changed
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    assert all(tuple(p) in colours for p in edited[region])  # every moved pixel existed in the photo
    donor = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    spliced, region = builders.splice(image, donor, rng)
    assert np.array_equal(spliced[~region], image[~region])


def test_a_feathered_splice_is_pasted_exactly_like_a_dcgan_face_but_with_real_pixels() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    # a donor whose every pixel says where it came from: red = row, green = column
    rows, cols = np.mgrid[0:90, 0:100]
    donor = np.stack([rows * 2, cols * 2, np.full_like(rows, 7)], -1).astype(np.uint8)
    face = np.full((64, 64, 3), 7, np.uint8)
    spliced, region = builders.feathered_splice(image, donor, np.random.default_rng(4))
    _, face_region = builders.paste_face(image, face, np.random.default_rng(5))

    def footprint(mask: np.ndarray) -> np.ndarray:
        top, left, bottom, right = builders.bounding_box(mask)
        return mask[top:bottom, left:right]

    assert np.array_equal(footprint(region), footprint(face_region))  # same ellipse, same size, same feathering
    top, left, bottom, right = builders.bounding_box((spliced != image).any(2))
    assert bottom - top <= 64 and right - left <= 64  # nothing changed outside one 64x64 window
    # the ellipse's core is an unresized 64x64 window of the donor: one offset maps every core pixel back to it
    core = builders.bounding_box(region)
    cy, cx = (core[0] + core[2]) // 2, (core[1] + core[3]) // 2
    centre = spliced[cy - 8 : cy + 8, cx - 8 : cx + 8].astype(int)
    dy, dx = centre[0, 0, 0] // 2 - (cy - 8), centre[0, 0, 1] // 2 - (cx - 8)
    expected = donor[cy - 8 + dy : cy + 8 + dy, cx - 8 + dx : cx + 8 + dx].astype(int)
    assert np.abs(centre - expected).max() <= 1
    assert label_of("feathered_splicing").cls == 0


def test_blend_and_prior_compression() -> None:
    rng = np.random.default_rng(1)
    original = np.zeros((32, 32, 3), np.uint8)
    generated = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    blended = builders.blend_inpainted(generated, original, mask)
    assert blended[mask].min() == 200 and blended[~mask].max() == 0
    formats = {builders.prior_compress(original, rng)[1] for _ in range(20)}
    assert formats == {"jpg", "webp"}


def test_view_sampling_never_upsamples_and_matches_the_range() -> None:
    rng = np.random.default_rng(2)
    spec = builders.ViewSpec(short_side=(256, 384))
    for source in (np.zeros((1600, 2560, 3), np.uint8), np.zeros((400, 400, 3), np.uint8)):
        for _ in range(10):
            view = builders.sample_view(source, rng, spec)
            # a 3:2 crop fitted into the 400-px crop box comes out shorter than the drawn short side
            assert 256 * 400 / 576 - 1 <= min(view.shape[:2]) <= 384
            assert max(view.shape[:2]) <= spec.max_crop_side
            assert max(view.shape[:2]) / min(view.shape[:2]) <= 1.5 + 0.01


def test_a_large_photo_and_a_generated_thumbnail_get_the_same_downscale_distribution() -> None:
    """Recipe v3: a 3000x4500 camera photo is no longer reduced ~10x into every view while a 400-px generated
    image is reduced ~1.2x; half the views of both are native pixels and the rest share one factor distribution."""
    spec = builders.ViewSpec()

    def factors(height: int, width: int) -> np.ndarray:
        rng = np.random.default_rng(7)
        views = [builders.view_geometry(height, width, rng, spec) for _ in range(2000)]
        for g in views:
            assert max(g.crop_h, g.crop_w) <= spec.max_crop_side
            assert g.height <= g.crop_h and g.width <= g.crop_w  # never upsampled
        return np.array([g.downscale for g in views])

    photo, thumbnail = factors(3000, 4500), factors(400, 400)
    for drawn in (photo, thumbnail):
        assert 1.0 <= drawn.min() and drawn.max() <= spec.max_downscale + 0.01
        assert 0.45 < np.mean(drawn == 1.0) < 0.6
    # any source that holds the crop box gets the same distribution (draws differ: integers() consumes by range)
    for q in (25, 50, 75, 90, 99):
        assert abs(np.percentile(photo, q) - np.percentile(thumbnail, q)) < 0.05
    assert np.percentile(photo, 90) > 1.4  # and the non-native half are real downscales
    view = builders.sample_view(np.zeros((3000, 4500, 3), np.uint8), np.random.default_rng(0), spec)
    assert min(view.shape[:2]) <= spec.short_side[1]


def test_loss_weights_are_two_two_one() -> None:
    zeros = torch.zeros(2, 1, 4, 4)
    output = GammaOutput(torch.zeros(2), zeros, zeros)
    total, parts = gamma_loss(output, torch.ones(2), torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
    ln2 = float(np.log(2))  # BCE of logit 0 against any binary target
    assert parts["cls"].item() == pytest.approx(ln2) and parts["manipulation_mask"].item() == pytest.approx(ln2)
    assert total.item() == pytest.approx(2 * (ln2 + ln2) + ln2)
    confident = GammaOutput(torch.full((2,), 20.0), torch.full((2, 1, 4, 4), 20.0), torch.full((2, 1, 4, 4), -20.0))
    total, _ = gamma_loss(confident, torch.ones(2), torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16))
    assert total.item() < 1e-6


def test_a_preset_without_crops_trains_and_validates_on_the_serving_crop(tmp_path: Path) -> None:
    """Unless a preset says otherwise (local-b0 trains at 192 for speed), crops are the contract's TILE_SIZE."""
    path = tmp_path / "plain.toml"
    path.write_text('name = "plain"\n[train]\nlr = 2e-4\n')
    config = TrainConfig.from_toml(path)
    assert (config.train_crop, config.val_crop, config.lr) == (TILE_SIZE, TILE_SIZE, 2e-4)


def test_comfyui_rule_keeps_generated_stills_only() -> None:
    """Pure name rule: first thumbnails of text-to-image templates plus the reviewed generated outputs."""
    keep = sources.is_generated_template_image
    for name in (
        "flux_schnell-1.webp",
        "api_krea2_t2i-1.webp",
        "image_qwen_image-1.webp",
        "image_z_image_turbo-1.webp",
    ):
        assert keep(name) and sources.is_text_to_image_template(name)
    for name in ("default-1.webp", "flux_canny_model_example-1.webp", "sd3.5_large_depth-1.webp"):
        assert keep(name) and not sources.is_text_to_image_template(name)  # allow-listed outputs
    assert not keep("flux_canny_model_example-2.webp")  # its canny map
    assert not keep("image_flux2-2.webp") and not keep("image_hidream_o1_dev-2.webp")  # second views
    assert not keep("image_flux2_fp8-1.webp")  # a collage, denied by name
    for name in (
        "image_qwen_image_edit_2509-1.webp",  # edit of a photo-realistic input
        "flux_fill_inpaint_example-1.webp",
        "utility-gan_upscaler-1.webp",
        "video_ltx2_t2v-1.webp",
        "api_quiver_text_to_svg-1.webp",
        "template_contact_sheet-step_1.app-1.webp",
        "audio_ace_step_1_t2a_song-1.mp3",
        "flux_schnell-1.png",
    ):
        assert not keep(name), name
    assert set(sources.GENERATED_OUTPUTS).isdisjoint(sources.NOT_GENERATED)
    assert all(name.endswith("-1.webp") for name in sources.GENERATED_OUTPUTS)


def test_generator_of_names_the_family_from_the_template_name(tmp_path: Path) -> None:
    name = sources.generator_name
    assert (
        name("flux_schnell-1.webp") == name("flux1_krea_dev-1.webp") == name("flux_kontext_dev_basic-1.webp") == "flux"
    )
    assert name("image_flux2_klein_text_to_image-1.webp") == "flux2"
    assert name("sd3.5_simple_example-1.webp") == "sd3.5" and name("sdxlturbo_example-1.webp") == "sdxl"
    assert name("image_hidream_o1-1.webp") == name("hidream_i1_dev-1.webp") == "hidream"
    assert name("02_qwen_Image_edit_subgraphed-1.webp") == name("image_qwen_image-1.webp") == "qwen"
    assert name("image_z_image_turbo-1.webp") == "z_image" and name("wan2.1_fun_control-1.webp") == "wan"
    assert name("image_netayume_lumina_t2i-1.webp") == "lumina" and name("api_luma_uni_1_image_create-1.webp") == "luma"
    assert name("api_krea2_t2i-1.webp") == "krea2" and name("default-1.webp") == "sd1.5"
    assert name("template_rob_realistic_2k_images_quick_variations-1.webp") == "other"
    real = sources.SourceImage("deb:x.jpg", tmp_path / "x.jpg", 0)
    fake = sources.SourceImage(
        "comfyui:image_chroma_text_to_image-1", tmp_path / "image_chroma_text_to_image-1.webp", 1
    )
    assert (sources.generator_of(real), sources.generator_of(fake)) == ("photo", "chroma")


def test_real_photo_rule_pieces() -> None:
    """Deny keys: plasma wallpapers by folder, everything else by file name; PNG only in listed folders."""
    assert sources._deny_key(Path("/usr/share/wallpapers/Volna/contents/images/1920x1080.jpg")) == "plasma:Volna"
    assert sources._deny_key(Path("/usr/share/lxqt/wallpapers/fog.jpg")) == "fog.jpg"
    assert "/usr/share/lxqt/wallpapers/beam.png".startswith(sources.PNG_PHOTO_DIRS)
    assert not "/usr/share/lxqt/themes/silver/beam.png".startswith(sources.PNG_PHOTO_DIRS)
    assert all(
        entry.split(":")[0] in {*sources._PHOTO_FOLDERS, *sources._PHOTO_DISTRIBUTIONS}
        for entry in sources.PACKAGE_PHOTOS
    )
    assert set(sources.DEBIAN_PACKAGES) >= {"scratch", "tuxpaint-data", "lxqt-themes", "palapeli-data"}
