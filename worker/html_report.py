"""``gamma-report SCAN_ID --html out.html``: one static, self-contained HTML page of a scan's flagged images.

Each flagged image (``ai-generated``, ``manipulated``, ``needs-review``) gets a row: the whole image (decoded from
the original bytes as the preprocessing contract decodes them, EXIF orientation applied, so the stored masks lie
over it exactly; downsized for the page), the image with its AI mask in red and with its manipulation mask in
blue, probability, verdict, areas and how many of the image's tiles the model saw. The masks are the stored
full-image PNGs (stride 4, :mod:`worker.masks`) scaled over the whole image; where no tile looked the image is
darkened (a mask is 0 there: "not looked at", not "clean"), and the most suspicious tile is outlined in yellow.
Every picture is a ``data:`` URI made with Pillow: the page needs no server and no bucket access to be viewed,
and it can be mailed. The table sorts by clicking a header (a few lines of inline JS); the page's URL fragment
``#sort=COLUMN:asc|desc`` picks the initial order.

Nothing secret goes in: no database URL, no endpoint, no credentials. URLs shown are stripped of user info and
query strings (a presigned URL's signature) by :func:`redact`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse, urlunparse

import click
import numpy as np
from PIL import Image
from sqlalchemy import Engine, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from gamma.preprocess import PreprocessLimits
from gamma.tiling import MASK_STRIDE, MAX_MASK_SIDE, Coverage, plan_tiles
from gamma.verdict import Verdict
from worker.db import Result, Scan, ScanItem, make_engine, session_factory
from worker.reasons import Reason
from worker.records import scan_summary
from worker.settings import Settings
from worker.storage import ObjectRef, ObjectUnreadable, S3Source, StorageUnavailable, parse_source, s3_client

FLAGGED = (Verdict.AI_GENERATED.value, Verdict.MANIPULATED.value, Verdict.NEEDS_REVIEW.value)
THUMB = 256  # the longer side of every picture on the page (the image's aspect ratio is kept)
AI_COLOUR = (255, 40, 40)
MANIPULATION_COLOUR = (40, 110, 255)
TOP_TILE_COLOUR = (255, 210, 0)
MAX_OVERLAY_ALPHA = 0.65
UNSEEN_BRIGHTNESS = 0.4  # parts no tile looked at, darkened to this
LEGACY_CROP = 512  # contract v1's crop: its masks cover the centre square of this side (the short side if smaller)


@dataclass
class Row:
    key: str
    verdict: str
    probability: float
    ai_area: float | None
    manipulated_area: float | None
    ai_mask_url: str | None
    manipulation_mask_url: str | None
    coverage: str | None = None
    tiles_seen: int | None = None
    tiles_total: int | None = None
    top_tile: list[int] | None = None  # [left, top, right, bottom] in upright image pixels


def redact(url: str) -> str:
    """``url`` without user info (``user:password@``) and without a query (presigned signatures)."""
    parsed = urlparse(url)
    if not parsed.scheme:
        return url
    host = parsed.hostname or ""
    netloc = host + (f":{parsed.port}" if parsed.port else "")
    return urlunparse((parsed.scheme, netloc, parsed.path, "", "", ""))


TOO_LARGE = "too large to preview"


class Reader:
    """Reads originals (from the scan's source) and masks (``file://`` or ``s3://`` URLs).

    Originals are read with the preprocessing byte limit (``GAMMA_MAX_BYTES``, else the contract's default: the
    one the scan judged them under), never more: a larger one raises :class:`~worker.storage.ObjectTooLarge` and
    its row says "too large to preview". S3 goes through the process's shared client (:func:`s3_client`).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = settings.preprocess_limits()

    def _client(self) -> object:
        return s3_client(self.settings.s3_endpoint_url, self.settings.s3_region)

    def url(self, url: str) -> bytes:
        parsed = urlparse(url)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).read_bytes()
        if parsed.scheme == "s3":
            return S3Source(parsed.netloc, "", self._client()).get(ObjectRef(unquote(parsed.path.lstrip("/"))), 0)
        raise ValueError(f"unsupported mask URL scheme {parsed.scheme!r}")

    def original(self, source_uri: str, key: str) -> bytes:
        """The original's bytes, at most ``limits.max_bytes`` of them (:class:`ObjectTooLarge` above)."""
        source = parse_source(source_uri, self.settings.s3_endpoint_url, self.settings.s3_region)
        return source.get(ObjectRef(key), self.limits.max_bytes)


def _data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=82) if fmt == "JPEG" else image.save(buffer, format=fmt)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def _placeholder(text: str) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (THUMB, THUMB), (70, 70, 70))
    ImageDraw.Draw(image).text((8, THUMB // 2 - 6), text[:40], fill=(230, 230, 230))
    return image


def whole_image(data: bytes, limits: PreprocessLimits | None = None) -> Image.Image:
    """The upright whole image, decoded as the preprocessing contract decodes it (EXIF orientation applied): the
    frame the tiles were cut from and the stored masks cover. Full resolution; :func:`display_size` shrinks it."""
    from gamma.preprocess import DEFAULT_LIMITS, decode_rgb

    return Image.fromarray(decode_rgb(data, limits or DEFAULT_LIMITS))


def stand_in(mask_shape: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image a (rows, columns) full-image mask covers, to within the stride: the frame of
    the dark stand-in drawn under a mask whose original cannot be read (the mask still shows where it flags)."""
    rows, cols = mask_shape
    return cols * MASK_STRIDE, rows * MASK_STRIDE


def display_size(width: int, height: int) -> tuple[int, int]:
    """A ``width`` x ``height`` image scaled so its longer side is :data:`THUMB` (the page's pictures)."""
    scale = THUMB / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_box(shape: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float] | None:
    """The region of a stored (rows, columns) mask that covers a ``width`` x ``height`` image, in mask pixels.

    A contract-v2 mask covers the whole image at stride 4, or 4 x the max-pooling factor when a side of the
    stride-4 mask exceeded MAX_MASK_SIDE (gamma.tiling.cap_mask); its last row and column may reach up to a
    stride past the image, hence the fractional box. None when the mask has another shape: one from contract v1.
    """
    rows, cols = math.ceil(height / MASK_STRIDE), math.ceil(width / MASK_STRIDE)
    factor = max(1, math.ceil(max(rows, cols) / MAX_MASK_SIDE))
    if shape != (math.ceil(rows / factor), math.ceil(cols / factor)):
        return None
    stride = MASK_STRIDE * factor
    return 0.0, 0.0, width / stride, height / stride


def mask_layer(mask_png: bytes, width: int, height: int, size: tuple[int, int]) -> Image.Image:
    """A stored mask as a greyscale layer over the ``width`` x ``height`` image shown at ``size``."""
    with Image.open(io.BytesIO(mask_png)) as opened:
        mask = opened.convert("L")
    box = mask_box((mask.height, mask.width), width, height)
    if box is not None:
        return mask.resize(size, Image.Resampling.BILINEAR, box=box)
    # A result from contract v1 (before tiling): its mask covers the centre square its 512 crop was cut from.
    scale = size[0] / width
    side = min(width, height, LEGACY_CROP)
    layer = Image.new("L", size, 0)
    shown = max(1, round(side * scale))
    square = mask.resize((shown, shown), Image.Resampling.BILINEAR)
    layer.paste(square, (round((width - side) / 2 * scale), round((height - side) / 2 * scale)))
    return layer


def seen_layer(coverage: str | None, width: int, height: int, size: tuple[int, int]) -> Image.Image | None:
    """255 where a tile of ``coverage`` looked at the image, 0 elsewhere, at ``size``; None when not known (a
    result from before contract v2, an image the plan refuses). Re-made from the plan: tiles are a function of
    the image's size and the mode, so nothing per tile needs storing."""
    if coverage not in tuple(Coverage):
        return None
    try:
        plan = plan_tiles(width, height, coverage)
    except ValueError:
        return None
    seen = Image.fromarray(plan.seen().astype(np.uint8) * 255)
    return seen.resize(size, Image.Resampling.NEAREST, box=(0, 0, width / MASK_STRIDE, height / MASK_STRIDE))


def overlay(base: Image.Image, layer: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """``base`` with ``colour`` blended in where the ``layer`` (a mask at ``base``'s size) is high
    (alpha = probability x 0.65)."""
    alpha = Image.fromarray((np.asarray(layer, dtype=np.float32) * MAX_OVERLAY_ALPHA).astype(np.uint8))
    return Image.composite(Image.new("RGB", base.size, colour), base, alpha)


def outline(image: Image.Image, box: list[int] | None, width: int) -> Image.Image:
    """``image`` (a ``width``-px-wide image shown at its size) with the tile ``box`` (image pixels) outlined."""
    if not box or len(box) != 4:
        return image
    from PIL import ImageDraw

    scale = image.width / width
    left, top, right, bottom = (round(v * scale) for v in box)
    ImageDraw.Draw(image).rectangle((left, top, max(left, right - 1), max(top, bottom - 1)), outline=TOP_TILE_COLOUR,
                                    width=2)  # fmt: skip
    return image


def pictures(reader: Reader, source_uri: str, row: Row) -> tuple[str, str, str]:
    """Data URIs of the image, the image + AI mask, the image + manipulation mask (placeholders when unreadable).

    The masks lie over the whole image (darkened where no tile looked); the most suspicious tile is outlined.
    An original that cannot be read is drawn as a dark stand-in of its mask's frame, so the masks still show.
    """
    base: Image.Image | None = None
    frame: tuple[int, int] | None = None  # (width, height) of the upright original
    reason = ""
    try:
        full = whole_image(reader.original(source_uri, row.key), reader.limits)
        frame = full.size
        base = full.resize(display_size(*frame), Image.Resampling.LANCZOS)
        del full
    except (ObjectUnreadable, StorageUnavailable, OSError, ValueError) as error:
        too_large = getattr(error, "reason", "") in (Reason.TOO_MANY_BYTES, Reason.TOO_MANY_PIXELS)
        reason = TOO_LARGE if too_large else type(error).__name__
    exact = base is not None  # a stand-in's frame is the mask's, to within the stride: no tile plan on it
    thumbs = []
    for url, colour in ((row.ai_mask_url, AI_COLOUR), (row.manipulation_mask_url, MANIPULATION_COLOUR)):
        try:
            if url is None:
                raise ValueError("no mask")
            mask = reader.url(url)
            if base is None or frame is None:
                with Image.open(io.BytesIO(mask)) as opened:
                    frame = stand_in((opened.height, opened.width))
                base = Image.new("RGB", display_size(*frame), (30, 30, 30))
            shown = overlay(base, mask_layer(mask, *frame, base.size), colour)
            seen = seen_layer(row.coverage, *frame, base.size) if exact else None
            if seen is not None:
                darker = Image.eval(shown, lambda v: int(v * UNSEEN_BRIGHTNESS))
                shown = Image.composite(shown, darker, seen)
            thumbs.append(_data_uri(outline(shown, row.top_tile, frame[0])))
        except (ObjectUnreadable, StorageUnavailable, OSError, ValueError):
            thumbs.append(_data_uri(_placeholder("mask unavailable")))
    if exact and base is not None and frame is not None:
        original = outline(base.copy(), row.top_tile, frame[0])
    else:
        original = _placeholder(reason)
    return _data_uri(original), thumbs[0], thumbs[1]


def flagged_rows(session: Session, scan_id: int, limit: int) -> list[Row]:
    rows = session.execute(
        select(ScanItem.key, Result)
        .join(Result, Result.id == ScanItem.result_id)
        .where(ScanItem.scan_id == scan_id, Result.verdict.in_(FLAGGED))
        .order_by(Result.probability.desc(), ScanItem.key)
        .limit(limit)
    ).all()
    return [
        Row(key, r.verdict, float(r.probability or 0.0), r.ai_area, r.manipulated_area, r.ai_mask_url,
            r.manipulation_mask_url, r.coverage, r.tiles_seen, r.tiles_total, r.top_tile)
        for key, r in rows
    ]  # fmt: skip


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}
th{cursor:pointer;background:#eee;user-select:none}th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}
td.key{max-width:22em;word-break:break-all;font-family:monospace}
img{display:block;max-width:200px;max-height:200px;width:auto;height:auto}
.v-ai-generated{color:#b00}.v-manipulated{color:#036}.v-needs-review{color:#850}
"""

SCRIPT = """
(function(){
  var table=document.getElementById('flagged'), body=table.tBodies[0];
  function sortBy(col, dir){
    var sel='[data-col="'+col+'"]', rows=Array.prototype.slice.call(body.rows);
    var numeric=table.querySelector('th'+sel).dataset.type==='num';
    rows.sort(function(a,b){
      var x=a.querySelector('td'+sel).dataset.value, y=b.querySelector('td'+sel).dataset.value;
      var c=numeric?(parseFloat(x)-parseFloat(y)):x.localeCompare(y);
      return dir==='asc'?c:-c;
    });
    rows.forEach(function(r){body.appendChild(r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
      th.classList.remove('asc','desc'); if(th.dataset.col===col){th.classList.add(dir);}
    });
    table.dataset.sortedBy=col+':'+dir;
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
    if(!th.dataset.col){return;}
    th.addEventListener('click',function(){sortBy(th.dataset.col, th.classList.contains('desc')?'asc':'desc');});
  });
  var m=/sort=([a-z_]+):(asc|desc)/.exec(location.hash);
  if(m && table.querySelector('th[data-col="'+m[1]+'"]')){sortBy(m[1],m[2]);}
})();
"""

COLUMNS = (("key", "key", "str"), ("verdict", "verdict", "str"), ("probability", "probability", "num"),
           ("ai_area", "AI area", "num"), ("manipulated_area", "manipulated area", "num"),
           ("tiles", "tiles seen", "num"))  # fmt: skip


def _legend(coverage: str | None) -> str:
    mode = f"coverage {html.escape(coverage)}: " if coverage else ""
    return (f"Masks over the whole image ({mode}darkened where no tile looked): red, AI-generated; blue, "
            "manipulation. Yellow: the most suspicious tile.")  # fmt: skip


def _tiles_cell(row: Row) -> tuple[str, str]:
    """(sort value, shown) of the tiles column: the share of the image's tiles seen, "seen/total mode"."""
    if row.tiles_seen is None or not row.tiles_total:
        return "0", "" if row.coverage is None else html.escape(row.coverage)  # a result from before contract v2
    shown = f"{row.tiles_seen}/{row.tiles_total}" + (f" {html.escape(row.coverage)}" if row.coverage else "")
    return f"{row.tiles_seen / row.tiles_total:.6f}", shown


def render(session: Session, scan_id: int, reader: Reader, limit: int = 500) -> str:
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise LookupError(f"no scan {scan_id}")
    summary = scan_summary(session, scan_id)
    rows = flagged_rows(session, scan_id, limit)
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>GAMMA scan {scan_id}</title><style>{STYLE}</style></head><body>",
        f"<h1>GAMMA scan {scan_id}</h1>",
        f'<p id="summary">source <code>{e(redact(scan.source_uri))}</code>, model {e(summary.model)}, '
        f"status {e(summary.status)}, {summary.processed} / {summary.total} processed; "
        + ", ".join(f"{e(v)}: {n}" for v, n in sorted(summary.verdicts.items()))
        + f". {len(rows)} flagged image(s) shown"
        + (f" (the {limit} most probable)" if len(rows) == limit else "")
        + f". {_legend(scan.coverage)}</p>",
        f'<table id="flagged" data-scan="{scan_id}" data-sorted-by="probability:desc"><thead><tr>',
        "<th>image</th><th>AI mask</th><th>manipulation mask</th>",
        *(f'<th data-col="{col}" data-type="{kind}">{e(title)}</th>' for col, title, kind in COLUMNS),
        "</tr></thead><tbody>",
    ]
    for row in rows:
        original, ai, manipulation = pictures(reader, scan.source_uri, row)
        values = {
            "key": (row.key, e(row.key)),
            "verdict": (row.verdict, f'<span class="v-{e(row.verdict)}">{e(row.verdict)}</span>'),
            "probability": (f"{row.probability:.6f}", f"{row.probability:.3f}"),
            "ai_area": (f"{row.ai_area or 0.0:.6f}", f"{row.ai_area or 0.0:.1%}"),
            "manipulated_area": (f"{row.manipulated_area or 0.0:.6f}", f"{row.manipulated_area or 0.0:.1%}"),
            "tiles": _tiles_cell(row),
        }
        out.append(f'<tr class="flagged" data-key="{e(row.key)}" data-verdict="{e(row.verdict)}">')
        for uri, alt in ((original, "image"), (ai, "AI mask"), (manipulation, "manipulation mask")):
            out.append(f'<td><img alt="{alt}" src="{uri}"></td>')
        for col, _, _ in COLUMNS:
            value, shown = values[col]
            css = ' class="key"' if col == "key" else ""
            out.append(f'<td data-col="{col}" data-value="{e(value)}"{css}>{shown}</td>')
        out.append("</tr>")
    out += ["</tbody></table>", f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scan_id", type=int)
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--db", "db_url", default=None, help="Database URL [env GAMMA_DB_URL; default sqlite:///gamma.db].")
@click.option("--limit", type=click.IntRange(1), default=500, show_default=True, help="Most probable flagged images.")
def main(scan_id: int, html_path: Path, db_url: str | None, limit: int) -> None:
    """Write a self-contained HTML page of SCAN_ID's flagged images with their mask overlays.

    Reads only: a database that is not there is an error (SQLite would create an empty file), and so is a page
    whose folder does not exist (checked before the page is made). Each failure is one line, no traceback.
    """
    settings = Settings.from_env(db_url=db_url)
    folder = html_path.parent
    if not folder.is_dir():
        raise click.ClickException(f"{html_path}: no folder {folder} to write the page in")
    engine = open_database(settings.db_url)
    try:
        with session_factory(engine)() as session:
            page = render(session, scan_id, Reader(settings), limit)
    except LookupError as error:
        raise click.ClickException(str(error)) from error
    except SQLAlchemyError as error:
        raise click.ClickException(f"database: {_first_line(error)}") from error
    finally:
        engine.dispose()
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise click.ClickException(f"{html_path}: {error.strerror or error}") from error
    click.echo(f"{html_path}: {page.count('<tr class=')} flagged image(s)", err=True)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def open_database(url: str) -> Engine:
    """An engine on an *existing* gamma database: a SQLite file that is not there is refused, never created,
    and one without the gamma tables is "not a gamma database". Raises :class:`click.ClickException`."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise click.ClickException(f"database URL: {error}") from error
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise click.ClickException("database: an in-memory SQLite database holds no scans")
        if not Path(database).is_file():
            raise click.ClickException(f"database: no SQLite file {database}")
    engine = make_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    except SQLAlchemyError as error:
        engine.dispose()
        raise click.ClickException(f"database: {_first_line(error)}") from error
    if not {"scans", "scan_items", "results"} <= tables:
        engine.dispose()
        raise click.ClickException("database: no gamma tables in it (not a gamma database, or never migrated)")
    return engine


if __name__ == "__main__":
    sys.exit(main())
