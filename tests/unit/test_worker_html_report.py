"""gamma-report: the self-contained HTML page of a scan's flagged images, rendered in headless Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import update

from tests.fixtures.fake_backend import CountingBackend
from worker.db import Scan
from worker.html_report import (
    Reader,
    Row,
    display_size,
    main,
    mask_box,
    mask_layer,
    pictures,
    redact,
    stand_in,
)
from worker.pipeline import run_chunk
from worker.runtime import Runtime
from worker.scans import list_into_scan, open_scan
from worker.settings import Settings
from worker.storage import LocalSource, ObjectRef

# grey level -> verdict with the fake backend (probability = mean / 255, manipulation mask = 255 - pixels)
IMAGES = {
    "bright one.png": 235,  # ai-generated, p~0.92
    "dir/ümlaut.png": 200,  # ai-generated, p~0.78
    "mid.png": 128,  # needs-review, p~0.5
    "dark.png": 20,  # manipulated (dark -> strong manipulation mask), p~0.08
    "dim.png": 60,  # manipulated, p~0.24
}
SECRET = "hunter2-s3cr3t"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("report")
    folder = root / "images"
    for name, grey in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (300, 200), (grey, grey, grey)).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"nope")
    db_url = f"sqlite:///{root / 'gamma.db'}"
    runtime = Runtime.create(Settings(db_url=db_url, masks_url=str(root / "masks")), backend=CountingBackend())
    source = LocalSource(folder)
    scan_id = open_scan(runtime.sessions, source, "gamma-fake")
    outcomes = []

    def dispatch(chunk: list[ObjectRef]) -> None:
        outcomes.extend(run_chunk(runtime, source.uri, chunk, scan_id))

    list_into_scan(runtime.sessions, scan_id, source, 32, dispatch)
    verdicts = {o.key: o.verdict for o in outcomes}
    with runtime.sessions.begin() as session:  # a source URI that carried credentials must not leak
        uri = f"https://admin:{SECRET}@storage.example/bucket?X-Amz-Signature={SECRET}"
        session.execute(update(Scan).where(Scan.id == scan_id).values(source_uri=uri))
    out = root / "out.html"
    result = CliRunner().invoke(main, [str(scan_id), "--html", str(out), "--db", db_url])
    assert result.exit_code == 0, result.output
    return out, verdicts


def test_every_flagged_image_has_a_row_with_embedded_pictures(report: tuple[Path, dict[str, str]]) -> None:
    out, verdicts = report
    page = out.read_text()
    flagged = {k for k, v in verdicts.items() if v in ("ai-generated", "manipulated", "needs-review")}
    assert flagged == set(IMAGES) and verdicts["broken.jpg"] == "error"
    assert set(re.findall(r'<tr class="flagged" data-key="([^"]+)"', page)) == flagged
    assert verdicts["bright one.png"] == "ai-generated" and verdicts["dark.png"] == "manipulated"
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 3 * len(flagged)
    ai_overlay = Image.open(io.BytesIO(base64.b64decode(uris[1]))).convert("RGB")  # brightest image, AI mask
    red, green, _ = ai_overlay.getpixel((128, 100))
    assert ai_overlay.size == (256, 171) and red > green + 30  # the red overlay, over the whole 300x200 image
    assert len(re.findall(r'<td data-col="tiles" data-value="1.000000">1/1 five</td>', page)) == len(flagged)
    assert "the most suspicious tile" in page
    assert 'src="http' not in page and "file://" not in page  # self-contained: nothing fetched when viewed


def test_no_credentials_in_the_page(report: tuple[Path, dict[str, str]]) -> None:
    page = report[0].read_text()
    assert SECRET not in page and "admin" not in page and "X-Amz" not in page
    assert "https://storage.example/bucket" in page
    assert "gamma.db" not in page
    assert redact("s3://AKIA:pw@bucket/k?x=1") == "s3://bucket/k"


def _dom(chromium: str, url: str, profile: Path) -> str:
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_chromium_renders_the_rows_and_sorts_them(report: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    out = report[0]

    def order(dom: str) -> list[str]:
        return re.findall(r'<tr class="flagged" data-key="([^"]+)"', dom)

    def probability_order(dom: str) -> list[float]:
        return [float(v) for v in re.findall(r'<td data-col="probability" data-value="([^"]+)"', dom)]

    default = _dom(chromium, out.as_uri(), tmp_path / "p1")
    assert len(order(default)) == len(IMAGES)
    assert probability_order(default) == sorted(probability_order(default), reverse=True)

    ascending = _dom(chromium, out.as_uri() + "#sort=probability:asc", tmp_path / "p2")
    assert 'data-sorted-by="probability:asc"' in ascending  # set by the page's script, not by the file
    assert probability_order(ascending) == sorted(probability_order(default))
    assert order(ascending) == list(reversed(order(default)))

    by_key = _dom(chromium, out.as_uri() + "#sort=key:asc", tmp_path / "p3")
    keys = [html_unescape(k) for k in order(by_key)]
    assert keys == sorted(IMAGES, key=lambda k: k) and 'class="asc"' in by_key


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_masks_and_originals_are_read_from_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's pictures come from the stored URLs when those are in a bucket (moto in-process)."""
    from moto import mock_aws

    from worker.storage import s3_client

    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = s3_client()
        s3.create_bucket(Bucket="uploads")
        s3.create_bucket(Bucket="masks")
        buffer = io.BytesIO()
        Image.new("RGB", (300, 200), (40, 40, 40)).save(buffer, format="PNG")
        s3.put_object(Bucket="uploads", Key="p/a b.png", Body=buffer.getvalue())
        mask = io.BytesIO()
        Image.new("L", (75, 50), 255).save(mask, format="PNG")  # the whole 300x200 image at stride 4
        s3.put_object(Bucket="masks", Key="g/ai.png", Body=mask.getvalue())
        row = Row("p/a b.png", "ai-generated", 0.9, 1.0, 0.0, "s3://masks/g/ai.png", "s3://masks/g/missing.png")
        original, ai, manipulation = pictures(Reader(Settings()), "s3://uploads/p/", row)
    decoded = [Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB") for uri in (original, ai)]
    assert decoded[0].size == decoded[1].size == (256, 171)
    assert decoded[0].getpixel((128, 100)) == pytest.approx((40, 40, 40), abs=4)
    for point in ((3, 3), (128, 100), (252, 167)):  # corners too: the mask spans the whole image, not a crop
        red, green, _ = decoded[1].getpixel(point)
        assert red > 150 and green < 80, point  # full-probability AI mask: strongly red
    assert manipulation.startswith("data:image/jpeg;base64,")  # a missing mask is a placeholder, not a crash


def _decoded(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def test_full_image_masks_lie_over_the_whole_image_darkened_where_unseen_with_the_top_tile_outlined(
    tmp_path: Path,
) -> None:
    """A 1600x700 image under centre: the mask is bright only over the centre tile, the rest of the image is
    darkened (no tile looked there), and the top tile is outlined in yellow on the image and on the masks."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (1600, 700), (128, 128, 128)).save(tmp_path / "img" / "wide.png")
    mask = np.zeros((175, 400), np.uint8)  # ceil(700 / 4) x ceil(1600 / 4)
    mask[23:151, 136:264] = 255  # the centre tile (544, 92, 1056, 604) at stride 4
    Image.fromarray(mask).save(tmp_path / "ai.png")
    top = [544, 92, 1056, 604]
    row = Row("wide.png", "ai-generated", 0.9, 1.0, 0.0, (tmp_path / "ai.png").as_uri(), None, "centre", 1, 8, top)
    original, ai, _ = (_decoded(uri) for uri in pictures(Reader(Settings()), (tmp_path / "img").as_uri(), row))
    assert original.size == ai.size == display_size(1600, 700) == (256, 112)
    scale = 256 / 1600
    left, upper = round(top[0] * scale), round(top[1] * scale)
    red, green, blue = original.getpixel((left, upper + 5))  # the outline: yellow through the JPEG's blur
    assert red > 190 and green > 170 and blue < red - 80, (red, green, blue)
    assert original.getpixel((20, 20)) == pytest.approx((128, 128, 128), abs=4)  # the image itself is not dimmed
    red, green, _ = ai.getpixel((128, 56))  # inside the centre tile: the mask, in red
    assert red > 150 and green < 100
    assert max(ai.getpixel((20, 56))) < 80  # outside every tile: darkened, no mask


def test_mask_geometry_follows_the_stride_and_the_cap_and_old_masks_cover_the_centre_square() -> None:
    assert mask_box((175, 400), 1600, 700) == (0.0, 0.0, 400.0, 175.0)
    assert mask_box((50, 75), 299, 198) == (0.0, 0.0, 74.75, 49.5)  # the last row and column reach past the image
    assert mask_box((625, 1125), 9000, 5000) == (0.0, 0.0, 1125.0, 625.0)  # max-pooled by 2 above 2048 per side
    assert mask_box((128, 128), 300, 200) is None  # a contract-v1 mask of a 512 crop
    old = np.asarray(mask_layer(_png(np.full((128, 128), 255, np.uint8)), 300, 200, (300, 200)))
    assert old[:, 50:250].min() == 255 and old[:, :49].max() == 0 and old[:, 251:].max() == 0
    assert stand_in((50, 75)) == (300, 200)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_unreadable_original_is_a_stand_in_of_its_masks_frame(tmp_path: Path) -> None:
    """The masks still show over a dark stand-in with the original's aspect ratio (known from the mask's shape)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "ai.png").write_bytes(_png(np.full((50, 75), 255, np.uint8)))
    row = Row("gone.png", "ai-generated", 0.9, 1.0, 0.0, (tmp_path / "ai.png").as_uri(), None, "five", 1, 1)
    original, ai, manipulation = (_decoded(u) for u in pictures(Reader(Settings()), (tmp_path / "img").as_uri(), row))
    assert ai.size == display_size(*stand_in((50, 75))) == (256, 171)
    red, green, _ = ai.getpixel((128, 85))
    assert red > 150 and green < 80
    assert original.size == manipulation.size == (256, 256)  # placeholders
