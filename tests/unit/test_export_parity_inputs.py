"""deploy/onnx_export.py's parity inputs: crops from the preprocessing contract, not only noise."""

from __future__ import annotations

import numpy as np
import pytest

import deploy.onnx_export as onnx_export
from deploy.onnx_export import contract_crops, parity_inputs
from gamma import wire


def _roughness(crop: np.ndarray) -> float:
    """Mean absolute difference of horizontal neighbours (uniform noise: ~85; photographs: a few)."""
    return float(np.abs(np.diff(crop.astype(np.int16), axis=-1)).mean())


def test_contract_crops_come_from_gamma_preprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    real = onnx_export.preprocess

    def spy(data: bytes) -> np.ndarray:
        seen.append(data)
        return real(data)

    monkeypatch.setattr(onnx_export, "preprocess", spy)
    crops = contract_crops(4, seed=3)
    assert len(seen) == 4
    assert [data[:3] == b"\xff\xd8\xff" for data in seen] == [True, False, True, False]  # JPEG, PNG, JPEG, PNG
    assert [data[:8] == b"\x89PNG\r\n\x1a\n" for data in seen] == [False, True, False, True]
    assert crops.shape == (4, *wire.IMAGES.shape) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, np.stack([real(data) for data in seen]))


def test_contract_crops_look_like_photographs_and_are_reproducible() -> None:
    crops = contract_crops(4, seed=5)
    np.testing.assert_array_equal(crops, contract_crops(4, seed=5))
    assert not np.array_equal(crops, contract_crops(4, seed=6))
    for crop in crops:
        assert _roughness(crop) < 10  # smooth regions and edges, unlike noise
        assert crop.std() > 20  # not a flat image either
        assert crop.max() == 255 or crop.min() == 0  # the saturated patch (clipped noise keeps it at the limit)
    assert len({crop.tobytes() for crop in crops}) == 4


@pytest.mark.parametrize(("batch", "structured"), [(1, 1), (2, 1), (4, 2), (5, 3)])
def test_parity_batches_mix_contract_crops_and_noise(batch: int, structured: int) -> None:
    images = parity_inputs(batch, seed=1000 + batch).numpy()
    assert images.shape == (batch, *wire.IMAGES.shape) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:structured], contract_crops(structured, seed=1000 + batch))
    assert all(_roughness(crop) < 10 for crop in images[:structured])
    assert all(_roughness(crop) > 60 for crop in images[structured:])
