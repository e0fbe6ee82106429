"""The feature cache's layer statistics (util.layer_taps, util.features): filled in the same single
forward pass as the penultimate features, keyed beside them, checked, sliced and merged."""

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from models.densenet import DenseNet3
from util.errors import UserError
from util.features import FeatureExtractor
from util.layer_taps import GRAM_POWERS, LayerArrays, TapSpec, gram_rows, split_rows

LAYERS = ("block1", "block2", "block3")


class Images(TensorDataset):
    def fingerprint(self):
        return {"images": len(self), "sum": float(self.tensors[0].sum())}


class Rows(Images):
    """A FixedSubset-like view: ``dataset`` and ``indices``, as util.data's subsets have."""

    def __init__(self, whole, indices):
        super().__init__(whole.tensors[0][indices], whole.tensors[1][indices])
        self.dataset, self.indices = whole, np.asarray(indices)

    def fingerprint(self):
        return {"of": self.dataset.fingerprint(), "rows": self.indices.tolist()}


def tiny_net():
    torch.manual_seed(0)
    return DenseNet3(depth=10, num_classes=5).eval()


def images(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 5)


def extractor(tmp_path, model=None):
    return FeatureExtractor(
        model or tiny_net(), {"t": 1}, tmp_path, device="cpu", num_workers=0, progress=False, batch_size=5
    )


def outputs_of(model, x, name):
    """The output of module ``name`` for images x, by a hook of the test's own."""
    got = {}
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: got.setdefault("z", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return got["z"]


def test_layer_statistics_are_filled_in_the_same_forward_pass_as_the_features(tmp_path):
    ex = extractor(tmp_path)
    ex.set_taps(TapSpec(LAYERS, ("pooled", "gram", "nac")))
    fs = ex.extract(images(), "train")
    assert ex.images_forwarded == 12
    assert fs.layers.names == LAYERS
    assert [a.shape for a in fs.layers.arrays["gram"]] == [(12, GRAM_POWERS, c) for c in (36, 30, 27)]


def test_pooled_statistics_are_the_mean_of_each_channel_over_its_positions(tmp_path):
    ex, data = extractor(tmp_path), images()
    ex.set_taps(TapSpec(LAYERS, ("pooled",)))
    fs = ex.extract(data, "train")
    for i, name in enumerate(LAYERS):
        want = outputs_of(ex.model, data.tensors[0], name).double().mean(dim=(2, 3)).numpy()
        np.testing.assert_allclose(fs.layers.arrays["pooled"][i], want, rtol=1e-5, atol=1e-6)


def test_gram_rows_are_the_signed_roots_of_the_full_gram_matrices_row_sums():
    z = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    got = gram_rows(z).numpy()
    for b in range(3):
        f = z[b].double().reshape(4, -1).numpy()
        for p in range(1, GRAM_POWERS + 1):
            row_sums = ((f**p) @ (f**p).T).sum(axis=1)
            want = np.sign(row_sums) * np.abs(row_sums) ** (1 / p)
            np.testing.assert_allclose(got[b, p - 1], want, rtol=1e-5)


def test_nac_statistics_are_the_summed_output_times_the_summed_kl_gradient(tmp_path):
    ex, data = extractor(tmp_path), images()
    ex.set_taps(TapSpec(LAYERS, ("nac",)))
    fs = ex.extract(data, "train")
    model, x = ex.model, data.tensors[0]
    kept = {}
    handle = model.block2.register_forward_hook(lambda m, i, o: kept.setdefault("z", o))
    probabilities = torch.softmax(model(x).double(), dim=1)
    kl = (np.log(1 / 5) - torch.log(probabilities)).mean(dim=1).sum() * 1.0  # KL(u || p) summed
    (grad,) = torch.autograd.grad(kl, kept["z"])
    handle.remove()
    want = (kept["z"].sum(dim=(2, 3)) * grad.sum(dim=(2, 3))).detach().numpy()  # the authors' pooling
    np.testing.assert_allclose(fs.layers.arrays["nac"][1], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_taps_leave_the_features_and_logits_bit_identical(tmp_path):
    plain = extractor(tmp_path / "a").extract(images(), "train")
    ex = extractor(tmp_path / "b")
    ex.set_taps(TapSpec(LAYERS, ("pooled", "nac")))
    tapped = ex.extract(images(), "train")
    assert np.array_equal(plain.features, tapped.features)
    assert np.array_equal(plain.logits, tapped.logits)


def test_an_entry_without_the_layers_asked_for_is_recomputed_with_a_message(tmp_path, capsys):
    ex = extractor(tmp_path)
    ex.extract(images(), "train")
    ex.set_taps(TapSpec(LAYERS, ("pooled",)))
    fs = ex.extract(images(), "train")
    assert "holds no pooled statistics of the layers block1, block2, block3" in capsys.readouterr().out
    assert ex.images_forwarded == 24 and fs.layers is not None


def test_recomputing_for_another_kind_keeps_the_kinds_the_entry_held(tmp_path):
    ex = extractor(tmp_path)
    ex.set_taps(TapSpec(LAYERS, ("gram",)))
    ex.extract(images(), "train")
    ex.set_taps(TapSpec(LAYERS, ("pooled",)))
    fs = ex.extract(images(), "train")
    assert set(fs.layers.arrays) == {"gram", "pooled"}


def test_an_entry_holding_the_layers_is_read_without_a_forward_pass(tmp_path):
    ex = extractor(tmp_path)
    ex.set_taps(TapSpec(LAYERS, ("pooled", "gram")))
    first = ex.extract(images(), "train")
    ex.set_taps(TapSpec(LAYERS, ("gram",)))
    again = ex.extract(images(), "train")
    assert ex.images_forwarded == 12 and again.from_cache
    assert np.array_equal(first.layers.arrays["gram"][2], again.layers.arrays["gram"][2])


def test_a_subset_of_a_cached_set_gets_the_subsets_layer_rows(tmp_path):
    ex, whole = extractor(tmp_path), images()
    ex.set_taps(TapSpec(LAYERS, ("pooled",)))
    full = ex.extract(whole, "train")
    part = ex.extract(Rows(whole, [1, 4, 7]), "train")
    assert ex.images_forwarded == 12
    assert np.array_equal(part.layers.arrays["pooled"][0], full.layers.arrays["pooled"][0][[1, 4, 7]])


def test_an_unknown_layer_name_is_an_error_naming_the_flag_and_the_modules():
    ex = FeatureExtractor(tiny_net(), {"t": 1}, "unused", device="cpu", progress=False)
    with pytest.raises(UserError, match="no module 'block9' for --feature-layers.*block1, trans1"):
        ex.set_taps(TapSpec(("block9",), ("pooled",)))


def test_an_unknown_statistic_kind_is_refused():
    with pytest.raises(ValueError, match="unknown layer statistics"):
        TapSpec(LAYERS, ("variance",))


def test_split_rows_cuts_flat_rows_back_into_each_arrays_shape():
    flat = np.arange(2 * 11).reshape(2, 11)
    a, b = split_rows(flat, [(3,), (2, 4)])
    assert a.shape == (2, 3) and b.shape == (2, 2, 4)
    assert np.array_equal(b[1].ravel(), flat[1, 3:])


def test_layer_arrays_blocks_give_float32_tensors_of_each_layer():
    arrays = LayerArrays(("a", "b"), {"pooled": (np.ones((4, 2)), np.zeros((4, 3)))})
    block = arrays.block(1, 3)
    assert [t.shape for t in block["pooled"]] == [(2, 2), (2, 3)]
    assert block["pooled"][0].dtype == torch.float32


def test_an_interrupted_recompute_for_layers_keeps_the_complete_entry(tmp_path, monkeypatch):
    ex = extractor(tmp_path)
    before = ex.extract(images(), "train")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(FeatureExtractor, "_blocks", interrupted)
    ex.set_taps(TapSpec(LAYERS, ("pooled",)))
    with pytest.raises(KeyboardInterrupt):
        ex.extract(images(), "train")
    ex.set_taps(None)
    assert ex.cache.problem(images(), "train") is None
    assert np.array_equal(ex.extract(images(), "train").features, before.features)


def test_concatenated_sets_keep_the_kinds_every_set_holds():
    a = LayerArrays(("x",), {"pooled": (np.zeros((2, 3)),), "gram": (np.zeros((2, 10, 3)),)})
    b = LayerArrays(("x",), {"pooled": (np.ones((4, 3)),)})
    both = LayerArrays.concatenate([a, b])
    assert set(both.arrays) == {"pooled"} and both.arrays["pooled"][0].shape == (6, 3)
