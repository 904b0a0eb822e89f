"""The learned tail (qfm_lib.tail): Lite0's last stage recomputing the token channels it wrote."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from qfm_lib import predict
from qfm_lib.decoder import DecoderConfig, TokenSet, TrainedDecoder, fit_decoder
from qfm_lib.features import FeatureSpec, extract_features, token_channel_names
from qfm_lib.tail import LearnedTail, tail_channels

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
        maps = tail.maps(cells[..., tail.block5:tail.block6].permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    want = cells[..., tail.block6:]
    assert float((maps - want).norm() / want.norm()) < 2e-3
    window = cells[2:7, 3:8].reshape(1, 25, c)
    with torch.no_grad():
        out = tail(window).view(5, 5, c)
    np.testing.assert_array_equal(out[..., :tail.block6].numpy(), window.view(5, 5, c)[..., :tail.block6].numpy())
    inner = out[1:4, 1:4, tail.block6:]
    assert float((inner - cells[3:6, 4:7, tail.block6:]).norm() / inner.norm()) < 2e-3


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
