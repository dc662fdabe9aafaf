import numpy as np
import pytest
from PIL import Image

from skanomaly.augment import dihedral_copies


def test_views_are_the_symmetries_of_the_square_in_order():
    image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    views = dihedral_copies([image, image[::-1]], n_copies=8)
    assert len(views) == 16
    expected = [np.rot90(image, k) for k in range(4)] + [np.rot90(image[:, ::-1], k) for k in range(4)]
    for got, want in zip(views[:8], expected):
        np.testing.assert_array_equal(got, want)
    # All eight are distinct for an image without symmetry; the second
    # image's views follow the first's.
    assert len({v.tobytes() for v in views[:8]}) == 8
    np.testing.assert_array_equal(views[8], image[::-1])
    assert dihedral_copies([image], n_copies=1)[0].shape == (5, 7, 3)


def test_paths_and_grey_images_are_read(tmp_path):
    grey = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    Image.fromarray(grey).save(tmp_path / "a.png")
    views = dihedral_copies([str(tmp_path / "a.png")], n_copies=2)
    assert [v.shape for v in views] == [(3, 4, 3), (4, 3, 3)]
    np.testing.assert_allclose(views[1][..., 0], np.rot90(grey / 255.0), atol=1e-6)


@pytest.mark.parametrize("bad", [0, 9, 2.0, True])
def test_bad_n_copies(bad):
    with pytest.raises(ValueError, match="n_copies must be an integer in \\[1, 8\\]"):
        dihedral_copies(np.zeros((1, 4, 4, 3)), n_copies=bad)


def test_a_bad_file_is_named(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ValueError, match="bad.png"):
        dihedral_copies([np.zeros((4, 4, 3)), str(tmp_path / "bad.png")])
