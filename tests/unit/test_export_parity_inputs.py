"""deploy/onnx_export.py's parity inputs: tiles from the preprocessing contract, not only noise, at any tile shape."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import deploy.onnx_export as onnx_export
from deploy.onnx_export import PARITY_SHAPES, contract_tiles, parity_inputs
from gamma import wire
from gamma.preprocess import Tiles
from gamma.tiling import TILE_SIZE

SMALL = (192, 288)  # (height, width): a 300x200 photograph's whole-image tile


def _roughness(tile: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours (uniform noise: ~85; photographs: a few)."""
    return float(np.abs(np.diff(tile.astype(np.int16), axis=-1)).mean())


def test_parity_runs_at_a_full_tile_and_a_small_non_square_one() -> None:
    assert (TILE_SIZE, TILE_SIZE) in PARITY_SHAPES
    assert any(h != w and max(h, w) < TILE_SIZE for h, w in PARITY_SHAPES)


@pytest.mark.parametrize(("height", "width"), [(TILE_SIZE, TILE_SIZE), SMALL])
def test_contract_tiles_come_from_gamma_preprocess(monkeypatch: pytest.MonkeyPatch, height: int, width: int) -> None:
    seen: list[bytes] = []
    real = onnx_export.preprocess

    def spy(data: bytes, *args: Any, **kwargs: Any) -> Tiles:
        seen.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(onnx_export, "preprocess", spy)
    tiles = contract_tiles(4, seed=3, height=height, width=width)
    assert len(seen) == 4
    assert [data[:3] == b"\xff\xd8\xff" for data in seen] == [True, False, True, False]  # JPEG, PNG, JPEG, PNG
    assert [data[:8] == b"\x89PNG\r\n\x1a\n" for data in seen] == [False, True, False, True]
    assert tiles.shape == (4, *wire.IMAGES.concrete(height, width)) and tiles.dtype == np.uint8
    # One tile per photograph: its centre tile, exactly what the serving contract cuts.
    expected = [real(data, coverage="centre").pixels for data in seen]
    assert all(len(pixels) == 1 for pixels in expected)
    np.testing.assert_array_equal(tiles, np.concatenate(expected))


def test_contract_tiles_look_like_photographs_and_are_reproducible() -> None:
    for height, width in PARITY_SHAPES:
        tiles = contract_tiles(4, seed=5, height=height, width=width)
        np.testing.assert_array_equal(tiles, contract_tiles(4, seed=5, height=height, width=width))
        assert not np.array_equal(tiles, contract_tiles(4, seed=6, height=height, width=width))
        for tile in tiles:
            assert _roughness(tile) < 10  # smooth regions and edges, unlike noise
            assert tile.std() > 20  # not a flat image either
            assert tile.max() == 255 or tile.min() == 0  # the saturated patch (clipped noise keeps it at the limit)
        assert len({tile.tobytes() for tile in tiles}) == 4


def test_contract_tiles_refuse_shapes_no_photograph_has() -> None:
    for height, width in ((32, 64), (100, 128), (544, 512)):
        with pytest.raises(ValueError, match="multiples of 32"):
            contract_tiles(1, height=height, width=width)


@pytest.mark.parametrize(("batch", "structured"), [(1, 1), (2, 1), (4, 2), (5, 3)])
@pytest.mark.parametrize(("height", "width"), [(TILE_SIZE, TILE_SIZE), SMALL])
def test_parity_batches_mix_contract_tiles_and_noise(batch: int, structured: int, height: int, width: int) -> None:
    images = parity_inputs(batch, 1000 + batch, height, width).numpy()
    assert images.shape == (batch, *wire.IMAGES.concrete(height, width)) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:structured], contract_tiles(structured, 1000 + batch, height, width))
    assert all(_roughness(tile) < 10 for tile in images[:structured])
    assert all(_roughness(tile) > 60 for tile in images[structured:])


def test_parity_inputs_below_the_smallest_photograph_are_noise() -> None:
    """A 32-px side is a shape the model takes but no preprocessed image has (MIN_SIDE 64): noise only."""
    images = parity_inputs(3, 7, 32, 64).numpy()
    assert images.shape == (3, *wire.IMAGES.concrete(32, 64))
    assert all(_roughness(tile) > 60 for tile in images)
