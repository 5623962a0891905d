"""The tracker's tensor math on tensors alone, and its history's round trip through a records folder."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_ilp.tracking.history import LearningHistory, checkpoint_state
from hf_ilp.tracking.learn_check import check_learned, tokenize_rows
from hf_ilp.tracking.records import RECORDS_DIRNAME, load_tracker_state
from hf_ilp.tracking.row_stats import match_rows, observation, row_statistics


def _batch(tok, order, pad_left):
    """Rows `order` of `tok`, padded to one width with 0 (left or right), and their labels (-100 off the completion)."""
    width = max(len(tok.ids[i]) for i in order)
    ids = np.zeros((len(order), width), dtype=np.int64)
    attn = np.zeros((len(order), width), dtype=np.int64)
    labels = np.full((len(order), width), -100, dtype=np.int64)
    for b, i in enumerate(order):
        n = len(tok.ids[i])
        at = slice(width - n, width) if pad_left else slice(0, n)
        ids[b, at], attn[b, at] = tok.ids[i], 1
        labels[b, at] = np.where(tok.targets[i], tok.ids[i], -100)
    return ids, attn, labels


@pytest.mark.parametrize("pad_left", [False, True])
def test_row_statistics_equal_the_learn_check(pad_left, half_trained, word_tokenizer, rows):
    """From the logits, and from a fused-head output made of the same log-probs, per-row statistics
    equal `check_learned`'s verdict; a row not tracked is counted, not matched."""
    tok = tokenize_rows(rows, word_tokenizer)
    index = {h: [i] for i, h in enumerate(tok.hashes)}
    targets = [np.asarray(t, dtype=bool) for t in tok.targets]
    order = [5, 0, 17, 3]
    ids, attn, labels = _batch(tok, order, pad_left)
    stranger = ids.copy()
    stranger[0, attn[0].argmax()] = 7  # another first token: no tracked row has these tokens
    mask, matched, unmatched = match_rows(stranger, attn, index, targets)
    assert unmatched == 1 and [b for b, _ in matched] == [1, 2, 3] and not mask[0].any()

    mask, matched, unmatched = match_rows(ids, attn, index, targets)
    assert unmatched == 0 and matched == [(b, [i]) for b, i in enumerate(order)]
    ids_t, attn_t, labels_t = map(torch.from_numpy, (ids, attn, labels))
    with torch.no_grad():
        logits = half_trained(input_ids=ids_t, attention_mask=attn_t).logits
    mask_t = torch.from_numpy(mask)
    from_logits = row_statistics(SimpleNamespace(logits=logits), ids_t, mask_t, labels_t, fused=False)

    log_probs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids_t[:, 1:, None]).squeeze(-1)
    is_top1 = logits[:, :-1].argmax(-1) == ids_t[:, 1:]
    fused = SimpleNamespace(log_probs=log_probs * mask_t, is_top1=is_top1 & mask_t, label_mask=mask_t)
    from_fused = row_statistics(fused, ids_t, mask_t, fused=True)
    np.testing.assert_allclose(from_fused, from_logits, rtol=1e-6, atol=1e-9)

    verdict = check_learned(half_trained, word_tokenizer, rows.select(order), progress=False)
    for b in range(len(order)):
        nll, token_acc, exact, p_gold = observation(from_logits[b])
        assert from_logits[b][3] == 0  # every completion token carries a label
        np.testing.assert_allclose([nll, token_acc, p_gold], [verdict[b][k] for k in ("nll", "token_acc", "p_gold")],
                                   rtol=2e-4, atol=1e-6)
        assert exact == verdict[b]["exact"]

    # the loss leaving out a completion token: that row cannot be exact, and the token is counted as uncovered
    labels_t[0, (labels_t[0] != -100).nonzero()[-1]] = -100
    narrowed = row_statistics(SimpleNamespace(logits=logits), ids_t, mask_t, labels_t, fused=False)
    assert narrowed[0][3] == 1 and narrowed[0][1] == from_logits[0][1] - 1 and observation(narrowed[0])[2] is False
    np.testing.assert_array_equal(narrowed[1:], from_logits[1:])
    assert observation(np.zeros(4)) is None
    with pytest.raises(ValueError, match="labels"):
        row_statistics(SimpleNamespace(logits=logits), ids_t, mask_t, fused=False)


def test_history_round_trips_through_a_checkpoint(word_tokenizer, rows, tmp_path):
    tok = tokenize_rows(rows, word_tokenizer)
    history = LearningHistory()
    history.resize(len(tok.ids))
    history.run = 0
    n = len(tok.ids)
    for step, exact in ((2, np.arange(n) % 2 == 0), (4, np.arange(n) % 3 == 0)):
        history.append("epoch", step, step / 2, 0, np.arange(n), nll=np.full(n, 0.5), token_acc=np.full(n, 0.5),
                       exact=exact, p_gold=np.full(n, 0.1), pass_at_n=np.full(n, np.nan))
    learned_ever = (np.arange(n) % 2 == 0) | (np.arange(n) % 3 == 0)
    shares = history.shares()
    assert shares["ilp/learned"] == pytest.approx(np.mean(np.arange(n) % 3 == 0))
    assert shares["ilp/never_learned"] == pytest.approx(np.mean(~learned_ever))
    assert sum(shares.values()) == pytest.approx(1)

    config = {"slope_window": 3}
    pending = {3: (7, 0.2, 1.0, True, 0.8)}
    history.write(tmp_path / "out" / "checkpoint-4" / RECORDS_DIRNAME, tok, config, pending, global_step=4)
    args = SimpleNamespace(output_dir=str(tmp_path / "out"), resume_from_checkpoint=None)
    saved, folders = checkpoint_state(args, 4)
    assert folders == [tmp_path / "out" / "checkpoint-4"]
    restored = LearningHistory()
    restored.resize(n)
    assert restored.load_state(saved, tok, folders[0]) == pending
    assert restored.shares() == shares and restored.run == 0
    assert restored.records(tok, 3)["exact"] == history.records(tok, 3)["exact"]
    assert checkpoint_state(args, 6) == (None, [tmp_path / "out" / "checkpoint-6"])

    other = tokenize_rows(rows.select(range(n - 1)), word_tokenizer)
    with pytest.raises(ValueError, match="rows added, removed or edited"):
        LearningHistory().load_state(load_tracker_state(folders[0] / RECORDS_DIRNAME), other, folders[0])
