"""Tests of crf.py: a brute-force oracle over every tag path, pytorch-crf, and invariants.

The oracle enumerates all K**n paths of a sentence with n words and scores each with the
formula of the module docstring, read off the raw parameters; BIO validity is checked by an
independent function here, not by `bio_constraints`. Of several best paths it returns the one
whose tags, read from the last word back, are smallest (the tie rule crf.py documents). A window
that continues a sentence gets start score 0 and may start with any tag. Dimensions: B batch,
W words, K tags.
"""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
import torchcrf
from torch.testing import assert_close

from crf import CRF, bio_constraints

ALGORITHMS = ["loop", "scaled", "scan"]
LABELS = ["O", "B-Chemical", "I-Chemical", "B-Disease", "I-Disease", "B-Gene", "I-Gene"]
LABELS += ["B-Species", "I-Species"]


# ---- factories and the oracle -----------------------------------------------------------------


def make_crf(K: int, seed: int, constrained: bool = False) -> CRF:
    """A float64 CRF with scores large enough (~N(0, 1)) that paths differ clearly."""
    torch.manual_seed(seed)
    crf = CRF.for_labels(LABELS[:K], constrained) if constrained else CRF(K)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf.double()


def make_batch(B: int, W: int, K: int, seed: int, scale: float = 1.0):
    """emissions (B, W, K) float64, tags (B, W) with -100 at padding, mask (B, W) bool.

    Lengths are random in 1..W with one of length W, so padding and one-word sentences occur.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, W + 1, (B,), generator=g)
    lengths[0] = W
    mask = torch.arange(W)[None, :] < lengths[:, None]  # (B, W)
    emissions = scale * torch.randn(B, W, K, generator=g, dtype=torch.float64)
    tags = torch.randint(0, K, (B, W), generator=g).masked_fill(~mask, -100)
    return emissions, tags, mask


def is_valid_bio(path: list[int], labels: list[str], continues: bool = False) -> bool:
    """True if no I-X follows anything other than B-X or I-X, nor starts the path unless the
    path continues a sentence (then the tag before it is unknown)."""
    previous = None if continues else "O"
    for tag in path:
        label = labels[tag]
        if label.startswith("I-") and previous is not None and previous[2:] != label[2:]:
            return False
        previous = label
    return True


@functools.cache
def enumerate_paths(K: int, n: int, valid_only: bool = False, continues: bool = False):
    """Every path (P, n) of n words over K tags (the valid BIO ones if asked), ordered by their
    tags read from the last word back: the first best path in this order is the one to return."""
    paths = [p[::-1] for p in itertools.product(range(K), repeat=n)]  # product varies p[-1] fastest
    if valid_only:
        paths = [p for p in paths if is_valid_bio(p, LABELS[:K], continues)]
    return torch.tensor(paths)  # (P, n)


def all_paths(crf: CRF, emissions: torch.Tensor, valid_only: bool = False,
              continues: bool = False):
    """Every path (P, n) of one sentence's emissions (n, K) and its score (P,), by enumeration."""
    n, K = emissions.shape
    paths = enumerate_paths(K, n, valid_only, continues)  # (P, n)
    with torch.no_grad():
        start = torch.zeros_like(crf.start) if continues else crf.start
        scores = (
            start[paths[:, 0]]
            + emissions[torch.arange(n), paths].sum(1)
            + crf.transitions[paths[:, :-1], paths[:, 1:]].sum(1)
            + crf.end[paths[:, -1]]
        )  # (P,)
    return paths, scores


def first_best(scores: torch.Tensor) -> int:
    """Index of the first of the best scores (the paths are in tie-breaking order)."""
    return int((scores == scores.max()).nonzero()[0, 0])


def oracle(crf: CRF, emissions, tags, mask, valid_only: bool = False, continues=None):
    """Per sentence: log Z, gold score, best path (padded with 0) and best score, (B,) each."""
    B, W, _ = emissions.shape
    continues = torch.zeros(B, dtype=torch.bool) if continues is None else continues
    log_z, gold, best_path, best = [], [], torch.zeros(B, W, dtype=torch.long), []
    for b in range(B):
        n = int(mask[b].sum())
        paths, scores = all_paths(crf, emissions[b, :n], valid_only, bool(continues[b]))
        log_z.append(torch.logsumexp(scores, 0))
        gold_index = (paths == tags[b, :n]).all(1).nonzero()
        gold.append(scores[gold_index[0, 0]] if len(gold_index) else torch.tensor(float("nan")))
        best.append(scores.max())
        best_path[b, :n] = paths[first_best(scores)]
    return torch.stack(log_z), torch.stack(gold).double(), best_path, torch.stack(best)


def valid_tags(emissions, mask, seed: int, continues=None) -> torch.Tensor:
    """Random valid BIO tags (B, W) for the sentences of `mask`, -100 at padding."""
    g = torch.Generator().manual_seed(seed)
    B, W, K = emissions.shape
    continues = torch.zeros(B, dtype=torch.bool) if continues is None else continues
    tags = torch.full((B, W), -100)
    for b in range(B):
        paths = enumerate_paths(K, int(mask[b].sum()), True, bool(continues[b]))
        tags[b, : paths.shape[1]] = paths[int(torch.randint(len(paths), (1,), generator=g))]
    return tags


# ---- the oracle -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("K,W", [(3, 5), (4, 4), (5, 5), (5, 1)])
def test_unconstrained_equals_brute_force(algorithm, K, W):
    crf = make_crf(K, seed=K * 10 + W)
    emissions, tags, mask = make_batch(4, W, K, seed=W)
    log_z, gold, best_path, best = oracle(crf, emissions, tags, mask)
    assert_close(crf.log_partition(emissions, mask, algorithm), log_z)
    assert_close(crf.score(emissions, tags, mask), gold)
    nll = crf.nll(emissions, tags, mask, reduction="none", algorithm=algorithm)
    assert_close(nll, log_z - gold)
    assert_close(crf.nll(emissions, tags, mask, "sum", algorithm), (log_z - gold).sum())
    assert_close(crf.nll(emissions, tags, mask, "mean", algorithm), (log_z - gold).mean())
    decode_with = algorithm if algorithm != "scaled" else "loop"
    path, score = crf.decode(emissions, mask, algorithm=decode_with)
    assert torch.equal(path, best_path)
    assert_close(score, best)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("K,W", [(3, 5), (5, 4), (5, 5)])
def test_constrained_equals_brute_force_over_valid_paths(algorithm, K, W):
    crf = make_crf(K, seed=K + W, constrained=True)
    emissions, _, mask = make_batch(4, W, K, seed=W + 1, scale=2.0)
    tags = valid_tags(emissions, mask, seed=W)
    log_z, gold, best_path, best = oracle(crf, emissions, tags, mask, valid_only=True)
    assert_close(crf.log_partition(emissions, mask, algorithm), log_z)
    nll = crf.nll(emissions, tags, mask, reduction="none", algorithm=algorithm)
    assert_close(nll, log_z - gold)
    decode_with = algorithm if algorithm != "scaled" else "loop"
    path, score = crf.decode(emissions, mask, algorithm=decode_with)
    assert torch.equal(path, best_path)
    assert_close(score, best)


def test_constraints_change_the_answer():
    """The brute force over all paths and over valid paths differ, so the tests above can fail."""
    K, W = 5, 5
    crf = make_crf(K, seed=0, constrained=True)
    emissions, _, mask = make_batch(4, W, K, seed=3, scale=2.0)
    log_z_all = oracle(crf, emissions, torch.zeros(4, W, dtype=torch.long), mask)[0]
    log_z_valid = oracle(crf, emissions, torch.zeros(4, W, dtype=torch.long), mask, True)[0]
    assert (log_z_all - log_z_valid).abs().max() > 0.1
    unconstrained = make_crf(K, seed=0)
    assert (unconstrained.log_partition(emissions, mask) - log_z_all).abs().max() < 1e-9


# ---- windows that continue a sentence ---------------------------------------------------------


def test_a_window_starting_inside_a_mention_is_a_path_like_any_other():
    """A window cut inside a mention starts with I-X. As a sentence start that is forbidden (NLL
    ~ 1e4, gold never decoded); as a continuation the NLL is small and gold decodes."""
    crf = make_crf(5, seed=30, constrained=True)
    gold = torch.tensor([[2, 2, 0, 3, 4]])  # I-Chemical I-Chemical O B-Disease I-Disease
    emissions = 10.0 * torch.nn.functional.one_hot(gold, 5).double()  # gold leads at every word
    mask, cut = torch.ones(1, 5, dtype=torch.bool), torch.tensor([True])
    for algorithm in ALGORITHMS:
        assert crf.nll(emissions, gold, mask, "none", algorithm) > 5000
        nll = crf.nll(emissions, gold, mask, "none", algorithm, continues=cut)
        assert torch.isfinite(nll).all() and 0 <= nll.item() < 1.0
    for algorithm in ("loop", "scan"):
        assert torch.equal(crf.decode(emissions, mask, algorithm=algorithm, continues=cut)[0], gold)
        assert crf.decode(emissions, mask, algorithm=algorithm)[0][0, 0] != 2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("constrained", [False, True])
def test_continuing_rows_equal_brute_force(algorithm, constrained):
    K, W = 5, 5
    crf = make_crf(K, seed=31, constrained=constrained)
    emissions, tags, mask = make_batch(6, W, K, seed=32, scale=2.0)
    continues = torch.tensor([True, False, True, True, False, True])
    if constrained:  # I-X may start the continuing rows only
        tags = valid_tags(emissions, mask, seed=33, continues=continues)
        assert any(tags[b, 0] in (2, 4) for b in range(6) if continues[b])
    log_z, gold, best_path, best = oracle(crf, emissions, tags, mask, constrained, continues)
    assert_close(crf.log_partition(emissions, mask, algorithm, continues=continues), log_z)
    assert_close(crf.score(emissions, tags, mask, continues=continues), gold)
    nll = crf.nll(emissions, tags, mask, "none", algorithm, continues=continues)
    assert_close(nll, log_z - gold)
    decode_with = algorithm if algorithm != "scaled" else "loop"
    path, score = crf.decode(emissions, mask, algorithm=decode_with, continues=continues)
    assert torch.equal(path, best_path)
    assert_close(score, best)
    # Without the flag the answer differs, so the comparison above can fail.
    plain = crf.nll(emissions, tags, mask, "none", algorithm)
    assert (plain - nll)[continues].abs().min() > 1e-3
    assert_close(plain[~continues], nll[~continues])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_continuing_rows_give_the_start_scores_no_gradient(algorithm):
    crf = make_crf(5, seed=34, constrained=True)
    emissions, _, mask = make_batch(4, 6, 5, seed=35)
    tags = crf.decode(emissions, mask, pad_tag=-100)[0]
    for continues, moves in ((torch.ones(4, dtype=torch.bool), False),
                             (torch.tensor([True, False, True, True]), True)):
        crf.zero_grad()
        crf.nll(emissions, tags, mask, "sum", algorithm, continues=continues).backward()
        assert (crf.start.grad.abs().sum() > 0) == moves
        assert crf.transitions.grad.abs().sum() > 0


def test_continues_must_be_a_bool_per_row():
    crf, mask = CRF(3), torch.ones(2, 4, dtype=torch.bool)
    emissions, tags = torch.randn(2, 4, 3), torch.zeros(2, 4, dtype=torch.long)
    for bad in (torch.ones(3, dtype=torch.bool), torch.ones(2), torch.ones(2, 1).bool()):
        with pytest.raises(ValueError, match=r"continues must be bool \(B,\) = \(2,\)"):
            crf.nll(emissions, tags, mask, continues=bad)
        with pytest.raises(ValueError, match="continues"):
            crf.decode(emissions, mask, continues=bad)


# ---- ties -------------------------------------------------------------------------------------


def integer_crf(K: int, seed: int, constrained: bool) -> CRF:
    """A float64 CRF with small integer scores: sums are exact and ties are everywhere."""
    torch.manual_seed(seed)
    crf = CRF.for_labels(LABELS[:K], constrained)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    return crf.double()


@pytest.mark.parametrize("constrained", [False, True])
def test_ties_give_the_same_path_in_the_loop_the_scan_and_the_brute_force(constrained):
    """1,000 sentences of integer scores per case (2,000 in all), a quarter of them continuing
    windows: the three return the same path, and over a third of the sentences have ties."""
    sizes = (3, 5) if constrained else (2, 3, 4)
    tied = 0
    for case in range(50):
        K = sizes[case % len(sizes)]
        crf = integer_crf(K, seed=case, constrained=constrained)
        g = torch.Generator().manual_seed(1000 + case)
        emissions = torch.randint(-1, 2, (20, 5, K), generator=g).double()  # (B, W, K)
        lengths = torch.randint(1, 6, (20,), generator=g)
        lengths[0] = 5
        mask = torch.arange(5)[None, :] < lengths[:, None]  # (B, W)
        continues = torch.rand(20, generator=g) < 0.25  # (B,)
        loop = crf.decode(emissions, mask, algorithm="loop", continues=continues)[0]
        scan = crf.decode(emissions, mask, algorithm="scan", continues=continues)[0]
        tags = torch.zeros(20, 5, dtype=torch.long)
        expected = oracle(crf, emissions, tags, mask, constrained, continues)[2]
        assert torch.equal(loop, expected), case
        assert torch.equal(scan, expected), case
        for b in range(20):
            n = int(mask[b].sum())
            scores = all_paths(crf, emissions[b, :n], constrained, bool(continues[b]))[1]
            tied += int((scores == scores.max()).sum() > 1)
    assert tied > 200  # of 1,000: the rule is really exercised


# ---- batching, fast paths, gradients ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("constrained", [False, True])
def test_batched_equals_one_by_one(algorithm, constrained):
    K, W = 5, 12
    crf = make_crf(K, seed=1, constrained=constrained)
    emissions, tags, mask = make_batch(6, W, K, seed=2)
    nll = crf.nll(emissions, tags, mask, reduction="none", algorithm=algorithm)
    decode_with = algorithm if algorithm != "scaled" else "loop"
    path, score = crf.decode(emissions, mask, pad_tag=-1, algorithm=decode_with)
    for b in range(len(mask)):
        n = int(mask[b].sum())
        one = (emissions[b : b + 1, :n], tags[b : b + 1, :n], mask[b : b + 1, :n])
        assert_close(crf.nll(*one, reduction="none", algorithm=algorithm), nll[b : b + 1])
        alone, alone_score = crf.decode(one[0], one[2], algorithm=decode_with)
        assert torch.equal(alone[0], path[b, :n])
        assert (path[b, n:] == -1).all()
        assert_close(alone_score, score[b : b + 1])


@pytest.mark.parametrize("algorithm", ["loop", "scan"])
@pytest.mark.parametrize("constrained", [False, True])
def test_semiring_invariants(algorithm, constrained):
    """The best score is the score of the best path, and lies between any path's and log Z."""
    K, W = 5, 30
    crf = make_crf(K, seed=20, constrained=constrained)
    emissions, tags, mask = make_batch(16, W, K, seed=21, scale=2.0)
    path, best = crf.decode(emissions, mask, algorithm=algorithm)
    assert_close(crf.score(emissions, path, mask), best)
    assert (crf.score(emissions, tags, mask) <= best + 1e-9).all()
    assert (best <= crf.log_partition(emissions, mask, "loop")).all()
    assert (crf.nll(emissions, tags, mask, "none") >= 0).all()


def gradients(crf: CRF, emissions, tags, mask, algorithm):
    crf.zero_grad()
    emissions = emissions.clone().requires_grad_()
    crf.nll(emissions, tags, mask, reduction="sum", algorithm=algorithm).backward()
    grads = [emissions.grad] + [p.grad.clone() for p in (crf.start, crf.transitions, crf.end)]
    return crf.nll(emissions, tags, mask, "none", algorithm).detach(), grads


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("K,W,scale", [(5, 1, 1.0), (5, 9, 1.0), (9, 40, 3.0), (5, 64, 20.0)])
def test_fast_paths_equal_the_loop(constrained, K, W, scale):
    """'scaled' and 'scan' give the loop's NLL and gradients, and the scan its decoding."""
    crf = make_crf(K, seed=W, constrained=constrained)
    emissions, tags, mask = make_batch(8, W, K, seed=K + W, scale=scale)
    if constrained:
        tags = crf.decode(emissions, mask, pad_tag=-100)[0]  # valid, so the NLL stays moderate
    reference, reference_grads = gradients(crf, emissions, tags, mask, "loop")
    for algorithm in ("scaled", "scan"):
        nll, grads = gradients(crf, emissions, tags, mask, algorithm)
        assert_close(nll, reference)
        for grad, expected in zip(grads, reference_grads, strict=True):
            assert_close(grad, expected)
    path, score = crf.decode(emissions, mask, algorithm="loop")
    scan_path, scan_score = crf.decode(emissions, mask, algorithm="scan")
    assert torch.equal(scan_path, path)
    assert_close(scan_score, score)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32_fast_paths_stay_close_at_large_scores(algorithm):
    """Emission gaps of ~100 nats (beyond float32's exp range) change nothing."""
    crf = make_crf(5, seed=4, constrained=True).float()
    emissions, _, mask = make_batch(8, 30, 5, seed=5, scale=50.0)
    tags = crf.decode(emissions.float(), mask, pad_tag=-100)[0]
    expected = crf.double().nll(emissions, tags, mask, "none", "loop")
    nll = crf.float().nll(emissions.float(), tags, mask, "none", algorithm)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    assert_close(nll.double(), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gradients_flow_and_are_finite(algorithm):
    crf = make_crf(5, seed=6, constrained=True).float()
    emissions, _, mask = make_batch(4, 10, 5, seed=7)
    emissions = emissions.float()
    tags = crf.decode(emissions, mask, pad_tag=-100)[0]
    _, (d_emissions, d_start, d_trans, d_end) = gradients(crf, emissions, tags, mask, algorithm)
    for grad in (d_emissions, d_start, d_trans, d_end):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert (d_emissions[~mask] == 0).all()  # padding takes no part
    assert (d_emissions[mask].abs().sum(-1) > 0).all()
    forbidden = ~crf.allowed_transitions
    assert (d_trans[forbidden] == 0).all() and (d_trans[~forbidden] != 0).any()
    # The NLL's gradient by the emissions of a word is P(tag) - 1[gold tag]: it sums to 0.
    assert_close(d_emissions.sum(-1), torch.zeros_like(d_emissions.sum(-1)), atol=1e-5, rtol=0)


# ---- BIO constraints --------------------------------------------------------------------------


def test_bio_constraints_semantics():
    start, trans, end = bio_constraints(LABELS[:5])
    o, b_c, i_c, b_d, i_d = range(5)
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    allowed = {(i, j) for i in range(5) for j in range(5) if trans[i, j]}
    forbidden = {(o, i_c), (o, i_d), (b_c, i_d), (i_c, i_d), (b_d, i_c), (i_d, i_c)}
    assert allowed == {(i, j) for i in range(5) for j in range(5)} - forbidden
    for path in itertools.product(range(5), repeat=4):  # agrees with the independent checker
        by_mask = bool(start[path[0]]) and all(trans[a, b] for a, b in itertools.pairwise(path))
        assert by_mask == is_valid_bio(list(path), LABELS[:5])


@pytest.mark.parametrize("labels", [["O", "X-Chemical"], ["O", "B-"], ["O", "O"], []])
def test_bio_constraints_rejects_bad_labels(labels):
    with pytest.raises(ValueError, match="label"):
        bio_constraints(labels)


@pytest.mark.parametrize("algorithm", ["loop", "scan"])
def test_decoded_paths_are_valid_bio(algorithm):
    """Emissions favouring I- tags: unconstrained decoding breaks BIO, constrained never does."""
    K, W = 5, 20
    emissions, _, mask = make_batch(64, W, K, seed=8, scale=2.0)
    emissions[:, :, [2, 4]] += 2.0  # I-Chemical, I-Disease
    constrained, free = make_crf(K, 9, constrained=True), make_crf(K, 9)
    paths = constrained.decode(emissions, mask, algorithm=algorithm)[0]
    free_paths = free.decode(emissions, mask, algorithm=algorithm)[0]
    lengths = mask.sum(1).tolist()
    assert all(is_valid_bio(p[:n].tolist(), LABELS) for p, n in zip(paths, lengths, strict=True))
    assert not all(
        is_valid_bio(p[:n].tolist(), LABELS) for p, n in zip(free_paths, lengths, strict=True)
    )


def test_constraints_survive_a_state_dict_round_trip():
    crf = make_crf(5, seed=10, constrained=True)
    emissions, _, mask = make_batch(8, 12, 5, seed=11, scale=3.0)
    emissions[:, :, [2, 4]] += 3.0
    reloaded = CRF(5).double()
    reloaded.load_state_dict(crf.state_dict())
    assert torch.equal(reloaded.allowed_transitions, crf.allowed_transitions)
    assert torch.equal(reloaded.decode(emissions, mask)[0], crf.decode(emissions, mask)[0])
    unconstrained = CRF.for_labels(LABELS[:5], constrained=False)
    assert unconstrained.allowed_transitions.all() and unconstrained.allowed_start.all()


# ---- pytorch-crf ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_equals_pytorch_crf(algorithm):
    """Same parameters (both read transitions[i, j] as i followed by j): same llh and paths."""
    K, W = 7, 16
    ours = make_crf(K, seed=12)
    theirs = torchcrf.CRF(K, batch_first=True).double()
    with torch.no_grad():
        theirs.start_transitions.copy_(ours.start)
        theirs.end_transitions.copy_(ours.end)
        theirs.transitions.copy_(ours.transitions)
    emissions, tags, mask = make_batch(10, W, K, seed=13)
    tags = tags.clamp(min=0)  # pytorch-crf indexes tags at padding too
    assert_close(-ours.nll(emissions, tags, mask, "sum", algorithm), theirs(emissions, tags, mask))
    decode_with = algorithm if algorithm != "scaled" else "loop"
    path = ours.decode(emissions, mask, algorithm=decode_with)[0]
    expected = theirs.decode(emissions, mask)
    assert [p[:n].tolist() for p, n in zip(path, mask.sum(1), strict=True)] == expected


# ---- boundary: masks, padding, dtypes, errors -------------------------------------------------


def test_padding_contents_are_ignored():
    crf = make_crf(5, seed=14, constrained=True)
    emissions, tags, mask = make_batch(6, 10, 5, seed=15)
    tags = crf.decode(emissions, mask, pad_tag=-100)[0]
    nll = crf.nll(emissions, tags, mask, "none")
    noisy = emissions.masked_fill(~mask[:, :, None], float("nan"))
    noisy_emissions = noisy.clone().requires_grad_()
    for algorithm in ALGORITHMS:
        loss = crf.nll(noisy_emissions, tags.masked_fill(~mask, 3), mask, "none", algorithm)
        assert_close(loss, nll)
        loss.sum().backward()
        assert torch.isfinite(noisy_emissions.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in crf.parameters())
    assert torch.equal(crf.decode(noisy, mask)[0], crf.decode(emissions, mask)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_emissions_compute_in_float32(dtype):
    """float32 results within 1e-5 of a float64 brute force over every path, on the emissions
    as rounded to half precision (float32 is off by ~1e-6 here; half precision by ~1e-3)."""
    crf = make_crf(4, seed=16).float()
    exact = copy.deepcopy(crf).double()  # the same scores (float32 values are exact in float64)
    emissions, tags, mask = make_batch(4, 6, 4, seed=17)
    half = emissions.to(dtype)
    log_z, gold, best_path, best = oracle(exact, half.double(), tags, mask)
    tolerance = {"rtol": 0, "atol": 1e-5}
    for algorithm in ALGORITHMS:
        nll = crf.nll(half, tags, mask, "none", algorithm)
        assert nll.dtype == torch.float32
        assert_close(nll.double(), log_z - gold, **tolerance)
    path, score = crf.decode(half, mask)
    assert score.dtype == torch.float32 and torch.equal(path, best_path)
    assert_close(score.double(), best, **tolerance)
    # Merely storing the true NLL in half precision misses by more than 10 times the tolerance:
    # a computation that passed through half precision would fail the checks above.
    assert ((log_z - gold).to(dtype).double() - (log_z - gold)).abs().max() > 1e-4
    log_z_full, gold_full = oracle(exact, emissions.float().double(), tags, mask)[:2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = crf.nll(emissions.float(), tags, mask, "none")
    assert nll.dtype == torch.float32
    assert_close(nll.double(), log_z_full - gold_full, **tolerance)


def test_one_word_sentences_and_pad_tag():
    crf = make_crf(4, seed=18)
    emissions, _, mask = make_batch(3, 1, 4, seed=19)
    path, score = crf.decode(emissions, mask)
    expected = crf.start + emissions[:, 0] + crf.end  # (B, K)
    assert torch.equal(path[:, 0], expected.argmax(1))
    assert_close(score, expected.max(1).values.detach())
    mask = torch.tensor([[True, True, False], [True, False, False]])
    path, _ = crf.decode(torch.randn(2, 3, 4, dtype=torch.float64), mask, pad_tag=-7)
    assert path[~mask].eq(-7).all() and path[mask].ge(0).all()


def test_empty_sentence_is_an_error():
    crf = CRF(3)
    mask = torch.tensor([[True, True], [False, False]])
    with pytest.raises(ValueError, match=r"at least|>= 1 word.*\[1\]"):
        crf.decode(torch.randn(2, 2, 3), mask)
    with pytest.raises(ValueError, match=">= 1 word"):
        crf.nll(torch.randn(2, 2, 3), torch.zeros(2, 2, dtype=torch.long), mask)


def test_non_contiguous_mask_is_an_error():
    crf = CRF(3)
    mask = torch.tensor([[True, True, True], [True, False, True]])
    with pytest.raises(ValueError, match=r"right-padded.*\[1\]"):
        crf.nll(torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.long), mask)
    with pytest.raises(ValueError, match="right-padded"):
        crf.decode(torch.randn(2, 3, 3), mask)


@pytest.mark.parametrize(
    "emissions_shape,mask_shape,tags_shape,match",
    [
        ((2, 3, 4), (2, 3), (2, 3), r"K=3.*\(2, 3, 4\)"),
        ((2, 3), (2, 3), (2, 3), r"\(2, 3\)"),
        ((2, 3, 3), (2, 4), (2, 3), r"\(2, 3\).*\(2, 4\)"),
        ((2, 3, 3), (2, 3), (3, 3), r"\(2, 3\).*\(3, 3\)"),
        ((2, 0, 3), (2, 0), (2, 0), r"W>0"),
    ],
)
def test_shape_mismatch_is_an_error(emissions_shape, mask_shape, tags_shape, match):
    with pytest.raises(ValueError, match=match):
        CRF(3).nll(
            torch.randn(emissions_shape),
            torch.zeros(tags_shape, dtype=torch.long),
            torch.ones(mask_shape, dtype=torch.bool),
        )


def test_bad_arguments_are_errors():
    crf = CRF(3)
    emissions, tags = torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="bool"):
        crf.nll(emissions, tags, mask.long())
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        crf.nll(emissions, tags + 3, mask)
    with pytest.raises(ValueError, match="reduction"):
        crf.nll(emissions, tags, mask, reduction="token_mean")
    with pytest.raises(ValueError, match="algorithm"):
        crf.nll(emissions, tags, mask, algorithm="fast")
    with pytest.raises(ValueError, match="algorithm"):
        crf.decode(emissions, mask, algorithm="scaled")
    with pytest.raises(ValueError, match="allowed transitions"):
        CRF(3, (torch.ones(3).bool(), torch.ones(3, 2).bool(), torch.ones(3).bool()))


def test_skipping_value_checks_changes_nothing_for_valid_input():
    torch.manual_seed(0)
    crf = CRF.for_labels(["O", "B-X", "I-X"])
    emissions, mask = torch.randn(3, 6, 3), torch.arange(6)[None] < torch.tensor([[6], [2], [4]])
    tags = torch.randint(0, 3, (3, 6))
    assert torch.equal(crf.nll(emissions, tags, mask), crf.nll(emissions, tags, mask,
                                                                check_values=False))
    fast, checked = crf.decode(emissions, mask, check_values=False), crf.decode(emissions, mask)
    assert torch.equal(fast[0], checked[0]) and torch.equal(fast[1], checked[1])


# ------------------------------------------------------------------ scaled out of its range


def far_apart(g: float, K: int = 3) -> tuple[CRF, torch.Tensor]:
    """The issue's repro: every score 0 but transitions[0, 1] = -800, and emissions that favour
    tag 0 then tag 1 by g nats: the paths that matter differ by about g at a word."""
    crf = CRF(K)
    with torch.no_grad():
        crf.start.zero_()
        crf.end.zero_()
        crf.transitions.zero_()
        crf.transitions[0, 1] = -800.0
    emissions = torch.tensor([[[0.0, -g, -g], [-g, 0.0, -g]]], dtype=torch.float64)
    return crf, emissions


@pytest.mark.parametrize("g", [600.0, 740.0, 760.0, 2000.0, 1e5])
def test_scaled_equals_the_log_space_loop_far_outside_exp_range(g):
    crf, emissions = far_apart(g)
    mask = torch.ones(1, 2, dtype=torch.bool)
    results = {}
    for algorithm in ("scaled", "loop"):
        leaf = emissions.clone().requires_grad_()
        log_z = crf.log_partition(leaf, mask, algorithm=algorithm)
        log_z.sum().backward()
        results[algorithm] = (log_z.detach(), leaf.grad, crf.transitions.grad.clone())
        crf.zero_grad()
    for found, expected in zip(results["scaled"], results["loop"]):
        assert torch.isfinite(found).all()
        torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)


def test_only_the_sentences_out_of_range_leave_the_fast_path():
    """A batch mixing ordinary and far-apart sentences: every row and every gradient as the
    loop gives them, with NaN never reaching the ordinary rows' gradients."""
    torch.manual_seed(0)
    crf = CRF(3)
    emissions = torch.randn(4, 5, 3, dtype=torch.float64)
    emissions[1, 2] = torch.tensor([0.0, -3000.0, 3000.0])
    emissions[3, :2] = torch.tensor([[0.0, -900.0, -900.0], [-900.0, 900.0, -900.0]])
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2, 3:] = False
    grads = {}
    for algorithm in ("scaled", "loop"):
        leaf = emissions.clone().requires_grad_()
        log_z = crf.log_partition(leaf, mask, algorithm=algorithm)
        (log_z * torch.arange(1.0, 5.0, dtype=torch.float64)).sum().backward()
        grads[algorithm] = (log_z.detach(), leaf.grad, crf.transitions.grad.clone(),
                            crf.start.grad.clone(), crf.end.grad.clone())
        crf.zero_grad()
    for found, expected in zip(grads["scaled"], grads["loop"]):
        torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-9)
