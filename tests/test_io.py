"""util/io.py: row blocks and row selections of memory-mapped arrays."""

import numpy as np


def test_row_blocks_of_a_memory_mapped_file_are_the_rows_in_order(tmp_path):
    from util.io import row_blocks

    x = np.arange(1000 * 3, dtype=np.float32).reshape(1000, 3)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(np.concatenate(list(row_blocks(mapped, 64))), x)
    np.testing.assert_array_equal(np.concatenate(list(row_blocks(mapped[10:], 64))), x[10:])


def test_take_rows_of_a_memory_mapped_file_are_those_rows_in_that_order(tmp_path):
    from util.io import take_rows

    x = np.random.default_rng(1).normal(size=(300, 9)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = np.array([299, 0, 17, 17, 150])
    got = take_rows(mapped, rows)
    assert not isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, x[rows])
    np.testing.assert_array_equal(take_rows(x, rows), x[rows])
