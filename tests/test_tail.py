"""The learned tail (qfm_lib.tail): Lite0's last stage recomputing the token channels it wrote."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from qfm_lib import predict
from qfm_lib.decoder import DecoderConfig, TrainedDecoder, fit_decoder
from qfm_lib.features import FeatureSpec, extract_features, to_tensor, token_channel_names
from qfm_lib.images import load_rgb
from qfm_lib.tail import LearnedTail, tail_channels, tail_input_maps, tail_tokens
from qfm_lib.tokens import TokenSet

from .conftest import outputs_on_thread_counts, write_image

TINY = replace(DecoderConfig(), dim=16, heads=2, gate_hidden=8, window=3, max_epochs=2, patience=2,
               tail_rate=0.3, gated=False)


@pytest.fixture(scope="module")
def real_tokens(lite0, livec):
    table = livec.head(10).reset_index(drop=True)
    feats = extract_features(table, FeatureSpec(), lite0, progress=False)
    return table, TokenSet(feats.tokens, feats.token_grid, feats.names, feats.meta["backbone"])


def test_tail_at_start_reproduces_the_cached_cells(real_tokens):
    """delta = 0: the folded block6 and head, fed the cached block5 cells, give the cached block6 and
    head cells (whole maps; a window's inner cells, which see no padding, too)."""
    _, tokens = real_tokens
    c = tokens.channels
    tail = LearnedTail.for_tokens("tf_efficientnet_lite0", np.zeros(c), np.ones(c), 0.3)
    (h, w), start = tokens.grid[0], tokens.offsets[0]
    cells = torch.from_numpy(np.asarray(tokens.tokens[start:start + h * w], np.float32)).view(h, w, c)
    with torch.no_grad():
        maps = tail.maps(cells[..., slice(*tail.read)].permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    want = cells[..., tail.write:]
    assert float((maps - want).norm() / want.norm()) < 2e-3
    window = cells[2:7, 3:8].reshape(1, 25, c)
    with torch.no_grad():
        out = tail(window).view(5, 5, c)
    np.testing.assert_array_equal(out[..., :tail.write].numpy(), window.view(5, 5, c)[..., :tail.write].numpy())
    inner = out[1:4, 1:4, tail.write:]
    assert float((inner - cells[3:6, 4:7, tail.write:]).norm() / inner.norm()) < 2e-3


def test_decoder_with_a_tail_learns_it_saves_and_predicts(real_tokens, tmp_path, lite0):
    table, tokens = real_tokens
    y = table["mos"].to_numpy(float)
    trained = fit_decoder(tokens, y, np.arange(7), np.arange(7, 10), replace(TINY, max_epochs=3, patience=3))
    tail = trained.model.tail
    assert isinstance(tail, LearnedTail)
    assert any(float(p.detach().abs().max()) > 0 for p in tail.parameters())  # the tail moved from the pretrained weights
    pred = trained.predict(tokens, np.arange(10))
    again = TrainedDecoder.from_state(trained.state())
    np.testing.assert_allclose(again.predict(tokens, np.arange(10)), pred, rtol=1e-5)
    path = predict.save_model(trained, tmp_path / "tail.pt", "tf_efficientnet_lite0", lite0.weights_sha256,
                              FeatureSpec(), table, model_kind="token-decoder")
    scores = predict.predict_images([table["path"][0]], predict.load_model(path), progress=False)
    assert scores["score"][0] == pytest.approx(pred[0], rel=1e-4)


def test_tail_errors(real_tokens):
    _, tokens = real_tokens
    anonymous = TokenSet(tokens.tokens, tokens.grid, tokens.names)
    with pytest.raises(ValueError, match="backbone"):
        fit_decoder(anonymous, np.arange(10.0), np.arange(7), np.arange(7, 10), TINY)
    with pytest.raises(ValueError, match="tail_rate"):
        DecoderConfig(tail_rate=-0.1)
    tail = LearnedTail.for_tokens("tf_efficientnet_lite0", np.zeros(tokens.channels), np.ones(tokens.channels), 0.3)
    with pytest.raises(ValueError, match="square windows"):
        tail(torch.zeros(1, 6, tokens.channels))
    model = fit_decoder(tokens, np.arange(10.0), np.arange(7), np.arange(7, 10), replace(TINY, max_epochs=1)).model
    with pytest.raises(ValueError, match="learned tail reads each window on its own"):
        model.window_scores_of_maps([torch.zeros(9, tokens.channels)], torch.zeros(1, 9, dtype=torch.long))
    names = token_channel_names(["block5", "head", "block6"], [4, 8, 6])
    with pytest.raises(ValueError, match="end with block5, block6, head"):
        tail_channels(names)
    assert tail_channels(token_channel_names(["block4", "block5", "block6", "head"], [3, 4, 6, 8])) == (6, 10)


def test_a_fit_does_not_depend_on_whether_it_loaded_the_backbone(real_tokens):
    """Building the timm model draws random weights; the tail's first load must not shift the fit's seed."""
    from qfm_lib import tail as tail_module

    table, tokens = real_tokens
    y = table["mos"].to_numpy(float)
    tail_module._backbone.cache_clear()
    first = fit_decoder(tokens, y, np.arange(7), np.arange(7, 10), TINY).predict(tokens, np.arange(10))
    again = fit_decoder(tokens, y, np.arange(7), np.arange(7, 10), TINY).predict(tokens, np.arange(10))
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("blocks", [2, 3])
def test_deeper_tail_reads_the_appended_input_and_reproduces_the_cached_cells(real_tokens, blocks):
    """tail_tokens appends the output of block5's block blocks - 1 from its end; at delta 0 the folded
    block5 blocks, block6 and head, fed it, give the cached block5, block6 and head cells, and the output
    drops the input."""
    table, tokens = real_tokens
    joined = tail_tokens(tokens, list(table["path"]), "test", blocks)
    c = tokens.channels
    assert joined.channels == c + 192
    np.testing.assert_array_equal(np.asarray(joined.tokens[:, :c]), np.asarray(tokens.tokens))
    tail = LearnedTail.for_tokens("tf_efficientnet_lite0", np.zeros(c + 192), np.ones(c + 192), 1.0, blocks=blocks)
    assert (tail.blocks, tail.read, tail.out_channels) == (blocks, (c, c + 192), c)
    (h, w), start = joined.grid[0], joined.offsets[0]
    cells = torch.from_numpy(np.asarray(joined.tokens[start:start + h * w], np.float32)).view(h, w, -1)
    with torch.no_grad():
        maps = tail.maps(cells[..., c:].permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    want = cells[..., tail.write:c]
    assert float((maps - want).norm() / want.norm()) < 2e-3
    with torch.no_grad():
        out = tail(cells[2:7, 3:8].reshape(1, 25, -1))
    assert out.shape == (1, 25, c)
    empty = LearnedTail.from_state({k: v for k, v in tail.state_dict().items() if not k.startswith("d")}, 1.0)
    assert (empty.blocks, empty.read, empty.write) == (tail.blocks, tail.read, tail.write)
    with pytest.raises(ValueError, match="reads 2368 token channels, got 2176"):
        LearnedTail.for_tokens("tf_efficientnet_lite0", np.zeros(c), np.ones(c), 1.0, blocks=blocks)


def test_decoder_with_a_two_block_tail_learns_saves_and_predicts(real_tokens, tmp_path, lite0):
    table, tokens = real_tokens
    joined = tail_tokens(tokens, list(table["path"]), "test", 2)
    y = table["mos"].to_numpy(float)
    trained = fit_decoder(joined, y, np.arange(7), np.arange(7, 10), replace(TINY, tail_blocks=2, max_epochs=2))
    assert trained.model.tail.blocks == 2 and trained.model.proj[0].in_features == tokens.channels
    pred = trained.predict(joined, np.arange(10))
    again = TrainedDecoder.from_state(trained.state())
    assert (again.model.tail.read, again.model.tail.write) == (trained.model.tail.read, trained.model.tail.write)
    np.testing.assert_allclose(again.predict(joined, np.arange(10)), pred, rtol=1e-5)
    path = predict.save_model(trained, tmp_path / "tail2.pt", "tf_efficientnet_lite0", lite0.weights_sha256,
                              FeatureSpec(), table, model_kind="token-decoder")
    saved = torch.load(path, weights_only=True)["model"]["state_dict"]
    assert "tail.dw6" in saved and not any(k in saved for k in ("tail.w0", "tail.b6"))  # folded again at load
    loaded = predict.load_model(path)
    for key, value in trained.model.tail.state_dict().items():
        torch.testing.assert_close(loaded["predictor"].trained.model.tail.state_dict()[key], value, rtol=0, atol=0)
    scores = predict.predict_images([table["path"][0]], loaded, progress=False)
    assert scores["score"][0] == pytest.approx(pred[0], rel=1e-4)


def test_two_block_tail_errors(real_tokens, tmp_path):
    table, tokens = real_tokens
    with pytest.raises(ValueError, match="tail_blocks must be >= 1"):
        DecoderConfig(tail_blocks=0)
    with pytest.raises(ValueError, match="has 1 to 4 blocks, got 5"):
        LearnedTail.for_tokens("tf_efficientnet_lite0", tokens.mean, tokens.std, 1.0, blocks=5)
    assert (DecoderConfig(tail_rate=1.0, tail_blocks=3).tail_input_blocks, DecoderConfig(tail_blocks=3).tail_input_blocks,
            DecoderConfig(tail_rate=1.0).tail_input_blocks) == (3, 0, 0)
    wide = tmp_path / "wide.png"
    write_image(wide, size=(700, 200))
    with pytest.raises(ValueError, match=f"{wide}: its 7x22 grid differs"):
        tail_tokens(tokens, [wide] + list(table["path"][1:]), "wrong image")


def test_tail_input_maps_do_not_depend_on_the_thread_count(livec, lite0):
    """The tail's input is cached, then compared with what `qfm predict` computes: it must have the same
    bits whatever thread count the process runs (PyTorch's convolutions differ in the last bits otherwise)."""
    x = to_tensor(load_rgb(livec["path"][0]), lite0)[None]
    maps = outputs_on_thread_counts(lambda: tail_input_maps(x, "tf_efficientnet_lite0", 3))
    assert torch.equal(maps[0], maps[1])
