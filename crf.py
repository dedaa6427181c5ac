"""A linear-chain conditional random field (CRF) over word tags, vectorised over batch and tags.

Implements the CRF of Lafferty et al. (2001), "Conditional Random Fields: Probabilistic Models
for Segmenting and Labeling Sequence Data", as put on top of a BiLSTM or BERT encoder for
named-entity tagging by Lample et al. (2016), "Neural Architectures for Named Entity
Recognition". The score of a tag path y over the n words of a sentence is

    start[y_0] + sum_t emissions[t, y_t] + sum_t transitions[y_t-1, y_t] + end[y_n-1];

`nll` is log Z - score(gold), log Z summing exp(score) over every path (forward algorithm), and
`decode` finds the best path (Viterbi). The forward algorithm and Viterbi are the same
recursion in two semirings, log-sum-exp versus max: `_recursion` takes the reduction as an
argument and serves both.

Three ways to compute log Z, held equal by tests:
- "loop": the recursion above in log space, one word at a time (the readable reference);
- "scaled": the same sum in exp space, rescaled at every word (Rabiner 1989): a multiply and
  a sum per word instead of a log-sum-exp, in float64, with the backward algorithm written out
  as its gradient (no autograd graph per word). Fastest on CPU. Exact while the scores of the
  paths that matter differ by less than ~660 nats at a word (float64's exponent range, with a
  margin): a sentence whose rescaled sum falls below 2^-960 at some word (scores far apart, a
  diverging run, fp16 emissions that overflowed) is detected and computed again by "loop", in
  log space, value and gradient alike, so the result never underflows to NaN;
- "scan": the (K, K) matrices of consecutive words combined pairwise in a tree, as in
  pytorch-struct: O(log W) depth but O(B W K^3) work and memory. Fastest on a GPU, where the
  loop is bound by kernel launches. Decoding has a "loop" and a "scan" (max semiring) version.
Which one runs is the CRF's `algorithm` (the config key `crf_algorithm`), or a call's own
`algorithm` argument: "loop" runs the readable recursion for both; "scaled" sums in exp space and
decodes by the loop (it is a way of summing, not of maximising); "scan" does both by the tree;
"auto", the default, takes the scan for CUDA tensors and "scaled" / "loop" for others.

Ties: both decoders return, of the best paths, the one whose tags read from the last word back
are smallest, which is what the lowest tag index at every argmax gives (the last word's tag,
then each back-pointer). With exact sums (integer scores, say) the loop, the scan and the tests'
brute force return the same path; with other floats the loop and the scan add in different
orders, so two paths within rounding of each other may come out either way.

A sentence longer than the encoder's limit reaches the CRF as several windows
(`data.make_windows`). `continues` (B,) bool marks the windows that do not begin the sentence:
they get no start score and no start constraint (see `_masked_scores`).

Optional BIO constraints (`bio_constraints`, `CRF.for_labels`) replace the scores of forbidden
starts, transitions and ends by NEG = -1e4 in training and decoding alike, so the model puts no
mass on invalid paths and never decodes one. NEG is finite rather than -inf so that log-sum-exp
never meets -inf - (-inf) = NaN and gradients stay finite; exp(-1e4) is 0 in float32 and float64,
so the result is that of -inf while path scores differ by less than ~9000.

Masks are right-padded and contiguous (mask[b] = 1...1 0...0) with at least one word; tags and
emissions at padded words are ignored (tags there may hold -100, emissions NaN). Computation is
in float32 or wider (float64 inputs stay float64), whatever autocast says. Left out: k-best
paths, marginals (take the gradient of `log_partition`), BIOES and other tagging schemes,
higher-order and semi-Markov CRFs.

Dimensions: B batch, W words (padded), K tags.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

NEG = -1e4  # score of a forbidden start, transition or end; off-diagonal of a padded scan step
# The smallest rescaled sum the "scaled" forward trusts: its terms are then normal float64
# numbers with their full 52 bits (below 2^-1022 they lose bits, below 2^-1074 they are 0).
SAFE_SUM = 2.0 ** -960
ALGORITHMS = ("loop", "scaled", "scan")
Scores = tuple[Tensor, Tensor, Tensor]  # start (B, K), transitions (K, K), end (K,), NEG-masked


def bio_constraints(labels: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Allowed (start (K,), transitions (K, K), end (K,)) for BIO labels `O`, `B-X`, `I-X`.

    `I-X` may not start a sentence and may only follow `B-X` or `I-X` (the same type X);
    everything else is allowed, and any tag may end a sentence. allowed[i, j]: i followed by j.
    """
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {list(labels)}")
    parsed = []
    for label in labels:
        prefix, _, kind = label.partition("-")
        if label != "O" and not (prefix in ("B", "I") and kind):
            raise ValueError(f"label {label!r} is not 'O', 'B-<type>' or 'I-<type>' (BIO)")
        parsed.append((prefix, kind))
    start = torch.tensor([prefix != "I" for prefix, _ in parsed])  # (K,)
    transitions = torch.tensor(
        [[pj != "I" or (pi in ("B", "I") and ki == kj) for pj, kj in parsed] for pi, ki in parsed]
    )  # (K, K)
    end = torch.ones(len(labels), dtype=torch.bool)  # (K,)
    return start, transitions, end


class CRF(nn.Module):
    """Linear-chain CRF with learnable start (K,), end (K,) and transitions (K, K) scores.

    transitions[i, j] is the score of tag i followed by tag j (as in pytorch-crf). Scores start
    uniform in (-0.1, 0.1), like pytorch-crf, so a fresh model has no exact ties. `allowed` is
    (start (K,), transitions (K, K), end (K,)) bool masks, None for no constraints; they are
    persistent buffers, so a checkpoint reloads with the constraints it was trained with.
    """

    def __init__(self, num_tags: int, allowed: tuple[Tensor, Tensor, Tensor] | None = None,
                 algorithm: str = "auto"):
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be >= 1, got {num_tags}")
        if algorithm not in ("auto", *ALGORITHMS):
            raise ValueError(f"algorithm must be 'auto' or one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        K = self.num_tags = num_tags
        self.start = nn.Parameter(torch.empty(K).uniform_(-0.1, 0.1))  # (K,)
        self.end = nn.Parameter(torch.empty(K).uniform_(-0.1, 0.1))  # (K,)
        self.transitions = nn.Parameter(torch.empty(K, K).uniform_(-0.1, 0.1))  # (K, K)
        if allowed is None:
            allowed = (torch.ones(K).bool(), torch.ones(K, K).bool(), torch.ones(K).bool())
        if len(allowed) != 3:
            raise ValueError(f"allowed must be (start, transitions, end), got {len(allowed)} items")
        names, shapes = ("start", "transitions", "end"), [(K,), (K, K), (K,)]
        for name, mask, shape in zip(names, allowed, shapes, strict=True):
            if mask.dtype != torch.bool or tuple(mask.shape) != shape:
                raise ValueError(
                    f"allowed {name} must be a bool tensor of shape {shape}, "
                    f"got {mask.dtype} of shape {tuple(mask.shape)}"
                )
        self.register_buffer("allowed_start", allowed[0].clone())  # (K,)
        self.register_buffer("allowed_transitions", allowed[1].clone())  # (K, K)
        self.register_buffer("allowed_end", allowed[2].clone())  # (K,)

    @classmethod
    def for_labels(cls, labels: Sequence[str], constrained: bool = True,
                   algorithm: str = "auto") -> CRF:
        """A CRF over BIO `labels` (tag id = index in `labels`), BIO-constrained if asked."""
        return cls(len(labels), bio_constraints(labels) if constrained else None, algorithm)

    def algorithms(self, on_cuda: bool) -> tuple[str, str]:
        """(log Z, best path): the algorithms this CRF runs when a call names none, on a CUDA
        device or not (module docstring)."""
        if self.algorithm == "auto":
            return ("scan", "scan") if on_cuda else ("scaled", "loop")
        return self.algorithm, "loop" if self.algorithm == "scaled" else self.algorithm

    # ---- public API ---------------------------------------------------------------------------

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor,
        reduction: str = "mean",
        algorithm: str | None = None,
        check_values: bool = True,
        continues: Tensor | None = None,
    ) -> Tensor:
        """Negative log-likelihood of `tags` (B, W) under emissions (B, W, K), mask (B, W) bool.

        reduction: "mean" over the batch (not over words), "sum", or "none" for (B,).
        algorithm: "loop", "scaled" or "scan" for log Z; None: the CRF's own (`algorithms`).
        check_values: check mask contents and tag range, at the cost of one host sync (on a
        GPU a stall of the pipeline); a caller that builds its masks itself can skip it.
        continues: (B,) bool, True for a window that continues a sentence (no start score or
        start constraint); None: every row begins its sentence.
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        with _no_autocast(emissions):
            emissions = self._check(emissions, mask, tags, check_values, continues)
            emissions = _zero_padding(emissions, mask)
            scores = self._masked_scores(emissions, continues)
            algorithm = algorithm or self.algorithms(emissions.is_cuda)[0]
            log_z = _log_partition(emissions, mask, scores, algorithm)  # (B,)
            nll = log_z - _path_score(emissions, tags, mask, scores)  # (B,)
        if reduction == "none":
            return nll
        return nll.mean() if reduction == "mean" else nll.sum()

    def log_partition(
        self,
        emissions: Tensor,
        mask: Tensor,
        algorithm: str | None = None,
        continues: Tensor | None = None,
    ) -> Tensor:
        """log Z (B,): log-sum-exp of the scores of all tag paths (forbidden ones count NEG)."""
        with _no_autocast(emissions):
            emissions = _zero_padding(self._check(emissions, mask, continues=continues), mask)
            scores = self._masked_scores(emissions, continues)
            algorithm = algorithm or self.algorithms(emissions.is_cuda)[0]
            return _log_partition(emissions, mask, scores, algorithm)

    def score(
        self, emissions: Tensor, tags: Tensor, mask: Tensor, continues: Tensor | None = None
    ) -> Tensor:
        """Score (B,) of the tag paths `tags` (B, W); each forbidden step counts NEG."""
        with _no_autocast(emissions):
            emissions = _zero_padding(self._check(emissions, mask, tags, True, continues), mask)
            return _path_score(emissions, tags, mask, self._masked_scores(emissions, continues))

    @torch.no_grad()
    def decode(
        self,
        emissions: Tensor,
        mask: Tensor,
        pad_tag: int = 0,
        algorithm: str | None = None,
        check_values: bool = True,
        continues: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Viterbi: best paths (B, W) long, `pad_tag` at padded words, and their scores (B,).

        algorithm: "loop" or "scan"; None: the CRF's own (`algorithms`). Runs without autograd.
        Ties go to the lowest tag index (module docstring). check_values, continues: as in `nll`.
        """
        if algorithm not in (None, "loop", "scan"):
            raise ValueError(f"decode algorithm must be 'loop', 'scan' or None, got {algorithm!r}")
        algorithm = algorithm or self.algorithms(emissions.is_cuda)[1]
        with _no_autocast(emissions):
            emissions = self._check(emissions, mask, None, check_values, continues)
            start, trans, end = self._masked_scores(emissions, continues)
            first = start + emissions[:, 0]  # (B, K)
            if algorithm == "scan":
                best, path = _viterbi_scan(first, trans, end, emissions, mask)
            else:
                best, path = _viterbi_loop(first, trans, end, emissions, mask)
        return path.masked_fill(~mask, pad_tag), best  # (B, W), (B,)

    # ---- internals ----------------------------------------------------------------------------

    def _check(
        self,
        emissions: Tensor,
        mask: Tensor,
        tags: Tensor | None = None,
        check_values: bool = True,
        continues: Tensor | None = None,
    ) -> Tensor:
        """Validate shapes (and, if asked, masks and tags); return emissions as float32
        (float64 stays float64)."""
        K = self.num_tags
        if emissions.dim() != 3 or emissions.shape[2] != K or 0 in emissions.shape:
            raise ValueError(f"emissions must be (B>0, W>0, K={K}), got {tuple(emissions.shape)}")
        if mask.shape != emissions.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool (B, W) = {tuple(emissions.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if tags is not None and (tags.shape != mask.shape or tags.dtype != torch.long):
            expected, found = tuple(mask.shape), (tags.dtype, tuple(tags.shape))
            raise ValueError(f"tags must be long (B, W) = {expected}, got {found}")
        if continues is not None and (
            continues.shape != mask.shape[:1] or continues.dtype != torch.bool
        ):
            raise ValueError(
                f"continues must be bool (B,) = {tuple(mask.shape[:1])}, "
                f"got {continues.dtype} {tuple(continues.shape)}"
            )
        if not check_values:
            return emissions.to(torch.promote_types(emissions.dtype, torch.float32))
        problems = [~mask[:, 0], mask[:, 1:] & ~mask[:, :-1]]  # (B,) empty, (B, W-1) 0 then 1
        if tags is not None:
            problems.append(mask & ((tags < 0) | (tags >= K)))  # (B, W)
        found = torch.stack([p.any() for p in problems]).tolist()  # one host sync for all checks
        if found[0]:
            rows = problems[0].nonzero().flatten().tolist()
            raise ValueError(f"every sequence needs >= 1 word; mask[b, 0] is False for b in {rows}")
        if found[1]:
            rows = problems[1].any(1).nonzero().flatten().tolist()
            raise ValueError(f"mask must be right-padded (1...1 0...0); it is not for b in {rows}")
        if tags is not None and found[2]:
            raise ValueError(f"tags at unmasked words must lie in [0, {K}); some do not")
        return emissions.to(torch.promote_types(emissions.dtype, torch.float32))

    def _masked_scores(self, emissions: Tensor, continues: Tensor | None) -> Scores:
        """start (B, K), transitions (K, K), end (K,) in the emissions' dtype; forbidden entries
        NEG (and zero gradient)."""
        dtype = emissions.dtype
        start = torch.where(self.allowed_start, self.start, NEG).to(dtype)  # (K,)
        start = start.expand(emissions.shape[0], -1)  # (B, K)
        if continues is not None:
            # A window that continues a sentence begins after words it cannot see: its first tag
            # may well be I-X, and the tag before it is unknown. Learned start scores (and the
            # ban on starting in I-X) describe sentence starts, so such a row gets zeros.
            start = torch.where(continues[:, None], 0.0, start)  # (B, K)
        trans = torch.where(self.allowed_transitions, self.transitions, NEG).to(dtype)  # (K, K)
        end = torch.where(self.allowed_end, self.end, NEG).to(dtype)  # (K,)
        return start, trans, end


def _log_partition(
    emissions: Tensor, mask: Tensor, scores: Scores, algorithm: str
) -> Tensor:
    """log Z (B,) by `algorithm`: "loop", "scaled" or "scan"."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS} or None, got {algorithm!r}")
    start, trans, end = scores
    first = start + emissions[:, 0]  # (B, K)
    if algorithm == "scaled":
        log_z, unsafe = _ScaledForward.apply(emissions, mask, start, trans, end)  # (B,), (B,)
        if unsafe.any():  # a host sync, on the CPU where "scaled" runs: it costs nothing there
            rows = unsafe.nonzero().squeeze(1)  # sentences out of exp space's range
            exact = _forward_loop(first[rows], trans, end, emissions[rows], mask[rows])
            log_z = log_z.index_put((rows,), exact)
        return log_z  # (B,)
    if algorithm == "scan":
        return _forward_scan(first, _steps(trans, emissions, mask), end)  # (B,)
    return _forward_loop(first, trans, end, emissions, mask)  # (B,)


def _path_score(emissions: Tensor, tags: Tensor, mask: Tensor, scores: Scores) -> Tensor:
    """Score (B,) of the paths `tags` (B, W); emissions must be 0 at padded words."""
    start, trans, end = scores
    tags = tags.masked_fill(~mask, 0)  # (B, W) padding (-100 or anything) -> a valid index
    last = tags.gather(1, mask.sum(1, keepdim=True) - 1).squeeze(1)  # (B,) tag of last word
    emit = emissions.gather(2, tags[:, :, None]).squeeze(2)  # (B, W) 0 at padding
    step = torch.where(mask[:, 1:], trans[tags[:, :-1], tags[:, 1:]], 0.0)  # (B, W-1)
    first = start.gather(1, tags[:, :1]).squeeze(1)  # (B,) start score of each first tag
    return first + emit.sum(1) + step.sum(1) + end[last]  # (B,)


def _zero_padding(emissions: Tensor, mask: Tensor) -> Tensor:
    """Emissions (B, W, K) with 0 at padded words, which may hold NaN: the log Z recursions read
    past a sentence's end, and 0 * NaN would reach the gradients. Decoding needs no such care."""
    return torch.where(mask[:, :, None], emissions, 0.0)  # (B, W, K)


def _no_autocast(emissions: Tensor) -> torch.autocast:
    """A context that turns autocast off: the CRF computes in float32 or wider, never bf16."""
    return torch.autocast(emissions.device.type, enabled=False)


# ---- the loop: one recursion, two semirings ---------------------------------------------------


def _recursion(
    first: Tensor, trans: Tensor, emissions: Tensor, reduce: Callable[[Tensor], Tensor]
) -> list[Tensor]:
    """alpha (K, B) for every word; reduce = log-sum-exp (forward) or max (Viterbi) over dim 0.

    Tags lead the layout, so the reduction runs over the outermost dimension (vectorised).
    Words past a sentence's end are computed too and never read.
    """
    B, _, K = emissions.shape
    trans = trans[:, :, None].expand(K, K, B).contiguous()  # (K, K, B): a plain add is faster
    alpha = first.T.contiguous()  # (K, B) alpha[j, b]: reduced over paths of words 0..t ending in j
    alphas = [alpha]
    for emit in emissions[:, 1:].permute(1, 2, 0).contiguous():  # W-1 of (K, B)
        # (K, K, B) [i, j, b]: paths ending in i at word t (alpha), then the step i -> j
        alpha = reduce(alpha[:, None, :] + trans) + emit  # (K, B)
        alphas.append(alpha)
    return alphas


def _last(alphas: Tensor, mask: Tensor) -> Tensor:
    """Row of `alphas` (W, B, K) at each sentence's last word, (B, K)."""
    index = (mask.sum(1) - 1)[None, :, None].expand(1, -1, alphas.shape[2])  # (1, B, K)
    return alphas.gather(0, index).squeeze(0)  # (B, K)


def _forward_loop(
    first: Tensor, trans: Tensor, end: Tensor, emissions: Tensor, mask: Tensor
) -> Tensor:
    """log Z (B,) by the forward algorithm, one word at a time (log semiring)."""
    alphas = _recursion(first, trans, emissions, lambda x: torch.logsumexp(x, dim=0))
    alphas = torch.stack(alphas).transpose(1, 2)  # (W, B, K)
    return torch.logsumexp(_last(alphas, mask) + end, dim=1)  # (B,)


def _viterbi_loop(
    first: Tensor, trans: Tensor, end: Tensor, emissions: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Best score (B,) and path (B, W) by Viterbi (max semiring) and a batched backtrace.

    The forward pass keeps only the scores; the backtrace recomputes, for the one tag chosen
    at word t+1, which tag at word t led to it: a (B, K) argmax per word instead of keeping a
    (K, K, B) one per word. (On a CPU an argmax over any but the innermost dimension, which
    back-pointers kept during the recursion would need, is several times slower than a max.)
    """
    deltas = torch.stack(_recursion(first, trans, emissions, lambda x: x.amax(dim=0)))  # (W, K, B)
    deltas = deltas.transpose(1, 2).contiguous()  # (W, B, K) [t, b, i]: best of words 0..t, i at t
    final = _last(deltas, mask) + end  # (B, K) best score of each whole path ending in i
    best, tag = final.amax(dim=1), final.argmax(dim=1)  # (B,), (B,) at the last word
    # From the last word on, deltas are 0 at that word's best tag and -inf elsewhere, so the
    # backtrace stays on it through the padding without a mask per word.
    words = torch.arange(mask.shape[1], device=mask.device)  # (W,)
    after = words[:, None] >= mask.sum(1) - 1  # (W, B)
    stay = torch.full_like(deltas[0], float("-inf")).scatter_(1, tag[:, None], 0.0)  # (B, K)
    deltas = torch.where(after[:, :, None], stay, deltas).unbind(0)  # W of (B, K)
    incoming = trans.T.contiguous()  # (K, K) incoming[j, i] = trans[i, j]
    path = [tag]
    for t in range(mask.shape[1] - 2, -1, -1):
        tag = (deltas[t] + incoming.index_select(0, tag)).argmax(dim=1)  # (B,) best tag at t
        path.append(tag)
    return best, torch.stack(path[::-1], dim=1)  # (B,), (B, W)


# ---- scaled: exp space, with the backward algorithm as the gradient ---------------------------


class _ScaledForward(torch.autograd.Function):
    """log Z (B,) of the forward algorithm in exp space; its gradient is the backward algorithm.

    p_t (K, B) holds the forward scores of word t rescaled to sum 1 by s_t, so log Z is the sum
    of log s_t plus the shifts taken out of the exponents. r_t (K, B) holds the backward scores
    rescaled by the same s_t, so that p_t * r_t is the marginal P(tag j at word t): the gradient
    of log Z by emissions[t, j]; by transitions[i, j] it is the sum over t of pairwise marginals.
    All in float64, tags leading as in `_recursion`; products are broadcast and summed rather
    than tiny matmuls, which stall on a busy multi-threaded CPU.

    Also returns `unsafe` (B,) bool: sentences whose rescaled sums s_t fell below SAFE_SUM at
    some word, where exp space has lost precision or underflowed to 0 (and 0 / 0 = NaN). Their
    log Z is returned as 0 and their backward terms as 0, so the caller can compute them in log
    space without NaN reaching the gradients.
    """

    @staticmethod
    def forward(ctx, emissions, mask, start, trans, end):
        dtype, f64 = emissions.dtype, torch.float64
        emissions = emissions.to(f64).permute(1, 2, 0).contiguous()
        start, trans, end = start.to(f64), trans.to(f64), end.to(f64)
        _, K, B = emissions.shape  # emissions now (W, K, B)
        shift = emissions.amax(1, keepdim=True)  # (W, 1, B) largest emission per word
        factor = torch.exp(emissions - shift)  # (W, K, B) exp(emission - shift), in (0, 1]
        weight = torch.exp(trans - trans.max())  # (K, K) exp(transition), in [0, 1]; forbidden 0
        weights = weight[:, :, None].expand(K, K, B).contiguous()  # (K, K, B) [i, j, b]
        start_max = start.amax(1)  # (B,)
        q = torch.exp(start - start_max[:, None]).T * factor[0]  # (K, B)
        s = q.sum(0, keepdim=True)  # (1, B)
        p = q / s  # (K, B) p[j, b]: rescaled score of all paths over words 0..t ending in j
        ps, ss = [p], [s]
        for x in factor[1:]:  # words past a sentence's end are computed too, then dropped
            q = (p[:, None, :] * weights).sum(0).mul_(x)  # (K, B) one more word, unnormalised
            s = q.sum(0, keepdim=True)  # (1, B)
            p = q.div_(s)  # (K, B)
            ps.append(p)
            ss.append(s)
        P, S = torch.stack(ps), torch.cat(ss)  # (W, K, B), (W, B)
        lengths = mask.sum(1)  # (B,)
        at_end = (lengths - 1)[None, None, :].expand(1, K, B)  # (1, K, B) index of the last word
        final = torch.exp(end - end.max())[:, None]  # (K, 1)
        s_end = (P.gather(0, at_end)[0] * final).sum(0)  # (B,)
        # A sum below the limit (or 0, then NaN after it) at any word of the sentence, or at its end
        unsafe = ~(torch.where(mask.T, S, 1.0) >= SAFE_SUM).all(0) | ~(s_end >= SAFE_SUM)  # (B,)
        keep = ~unsafe  # (B,)
        log_z = (
            torch.where(mask.T, torch.log(S) + shift[:, 0], 0.0).sum(0)
            + (lengths - 1) * trans.max()
            + start_max
            + torch.log(s_end)
            + end.max()
        )  # (B,)
        # For the backward pass, P and factor / s with padded words (and unsafe rows) zeroed.
        kept = mask.T[:, None, :] & keep  # (W, 1, B)
        P = torch.where(kept, P, 0.0)  # (W, K, B)
        factor = torch.where(kept, factor / S[:, None, :], 0.0)  # (W, K, B)
        r_last = torch.where(keep, final / s_end, 0.0)  # (K, B) r at the last word
        ctx.save_for_backward(at_end, P, factor, weight, r_last)
        ctx.mark_non_differentiable(unsafe)
        return torch.where(keep, log_z, 0.0).to(dtype), unsafe

    @staticmethod
    def backward(ctx, grad, _):
        return _ScaledForward.gradients(ctx, grad)

    @staticmethod
    def gradients(ctx, grad):
        """The backward algorithm: gradients of log Z (B,) by the forward's inputs."""
        at_end, P, factor, weight, r_last = ctx.saved_tensors  # P, factor / s (W, K, B)
        W, K, B = P.shape
        # r_last at each sentence's last word, 0 elsewhere: where the backward recursion starts.
        starts = torch.zeros_like(P).scatter_(0, at_end, r_last[None])  # (W, K, B)
        weights = weight.T[:, :, None].expand(K, K, B).contiguous()  # (K, K, B) [j, i, b]
        r = starts[-1]  # (K, B) r[i, b]: rescaled score of all paths over words t+1.. given i at t
        rs, us = [r], []
        for t in range(W - 1, 0, -1):
            u = factor[t] * r  # (K, B) the same from word t on, given j at t (0 past the end)
            r = (u[:, None, :] * weights).sum(0) + starts[t - 1]  # (K, B)
            rs.append(r)
            us.append(u)
        g = grad.to(P.dtype)  # (B,) upstream gradient of each log Z
        marginal = g * P * torch.stack(rs[::-1])  # (W, K, B) g * P(tag j at word t)
        pairs = torch.zeros_like(weight)  # (K, K) sum over t, b of g * p_t-1[i] * u_t[j]
        if us:
            U = torch.stack(us[::-1]) * g  # (W-1, K, B)
            pairs = torch.einsum("tib,tjb->ij", P[:-1], U)  # (K, K)
        last = (g * r_last * P.gather(0, at_end)[0]).sum(1)  # (K,) g * P(tag j at last word)
        dtype = grad.dtype
        return (
            marginal.permute(2, 0, 1).to(dtype),  # (B, W, K)
            None,
            marginal[0].T.to(dtype),  # (B, K)
            (weight * pairs).to(dtype),  # pairwise marginals: p[i] * weight[i, j] * u[j]
            last.to(dtype),
        )


# ---- scan: pairwise combination of step matrices, O(log W) depth ------------------------------


def _steps(trans: Tensor, emissions: Tensor, mask: Tensor) -> Tensor:
    """Step matrices (B, W-1, K, K) for the scan.

    steps[b, t, i, j] is the score of tag i at word t followed by tag j at word t+1 (transition
    plus emission of j). A padded word's step is the semiring identity (0 on the diagonal, NEG
    elsewhere), so a sentence's score carries over to the last column unchanged.
    """
    steps = trans + emissions[:, 1:, None, :]  # (B, W-1, K, K)
    return torch.where(mask[:, 1:, None, None], steps, _identity(trans))  # (B, W-1, K, K)


def _identity(trans: Tensor) -> Tensor:
    """The step that keeps the tag, (K, K): 0 on the diagonal, NEG elsewhere."""
    return torch.full_like(trans, NEG).fill_diagonal_(0)  # (K, K)


def _pad(steps: Tensor) -> Tensor:
    """Append identity steps up to a power of two, (B, 2^L, K, K) with 2^L >= W-1 >= 1."""
    B, n, K, _ = steps.shape
    extra = (1 << (n - 1).bit_length()) - n
    return torch.cat([steps, _identity(steps[0, 0]).expand(B, extra, K, K)], dim=1)


def _forward_scan(first: Tensor, steps: Tensor, end: Tensor) -> Tensor:
    """log Z (B,) by combining step matrices pairwise in the log semiring."""
    if steps.shape[1] == 0:  # one-word batch: no steps
        return torch.logsumexp(first + end, dim=1)  # (B,)
    steps = _pad(steps)  # (B, n, K, K), n a power of two
    while steps.shape[1] > 1:
        left, right = steps[:, 0::2], steps[:, 1::2]  # (B, n/2, K, K) each
        # [b, m, i, j]: log-sum-exp over the paths from tag i at the start of span m (two
        # spans of the level below) to tag j at its end, summing out the middle tag.
        steps = torch.logsumexp(left[..., :, :, None] + right[..., None, :, :], dim=-2)
    total = first[:, :, None] + steps[:, 0] + end[None, None, :]  # (B, K, K) [b, first, last]
    return torch.logsumexp(total.flatten(1), dim=1)  # (B,)


def _viterbi_scan(
    first: Tensor, trans: Tensor, end: Tensor, emissions: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Best score (B,) and path (B, W) by Viterbi in O(log W) depth, ties broken as the loop's.

    Three passes, none sequential over words:
    1. the loop's scores delta_t for every word, by a prefix scan in the max semiring (Blelloch
       1990): step matrices are combined pairwise up a tree, then the scores at the start of
       each span are passed down it (a right half starts where its left sibling ends);
    2. every back-pointer at once: the best tag at word t for each tag at word t+1;
    3. the backtrace by pointer doubling: composing the back-pointer maps of words t, t+1, ...
       takes log W rounds of one gather each.
    Keeping the best midpoint tag of each span instead, and filling the path in top-down, would
    break ties by the shape of the span tree rather than by the loop's rule.
    """
    B, W, K = emissions.shape
    if W == 1:  # one-word batch: no steps
        final = first + end  # (B, K)
        return final.amax(dim=1), final.argmax(dim=1, keepdim=True)  # (B,), (B, 1)
    # 1. Up the tree: levels[l][b, m, i, j] is the best score of a path from tag i at the start
    # of span m (2^l steps) to tag j at its end.
    levels = [_pad(_steps(trans, emissions, mask))]  # (B, n, K, K), n a power of two
    while levels[-1].shape[1] > 1:
        left, right = levels[-1][:, 0::2], levels[-1][:, 1::2]  # (B, n/2, K, K) each
        levels.append((left[..., :, :, None] + right[..., None, :, :]).amax(dim=-2))
    # Down the tree: at[b, m, j] is the best score of words 0..s ending in tag j, s the first
    # word of span m; at the bottom, span t starts at word t, so at[:, t] is delta_t.
    at = first[:, None, :]  # (B, 1, K): the one top span starts at word 0
    for level in reversed(levels[:-1]):  # level (B, 2m, K, K), at (B, m, K)
        right = (at[..., :, None] + level[:, 0::2]).amax(dim=-2)  # (B, m, K) after left halves
        at = torch.stack([at, right], dim=2).flatten(1, 2)  # (B, 2m, K)
    # 2. back[b, t, j]: best tag at word t before tag j at word t+1, the lowest on ties.
    best_in, back = (at[:, : W - 1, None, :] + trans.T).max(dim=-1)  # (B, W-1, K) each
    deltas = torch.cat([first[:, None], best_in + emissions[:, 1:]], dim=1)  # (B, W, K)
    last = mask.sum(1) - 1  # (B,) index of each sentence's last word
    final = deltas.gather(1, last[:, None, None].expand(B, 1, K)).squeeze(1) + end  # (B, K)
    best, tag = final.amax(dim=1), final.argmax(dim=1)  # (B,), (B,) at the last word
    # 3. follow[b, t, j]: the tag at word t given tag j at word t+1 (a map K -> K; at t = W-1
    # from a word past the end). From the last word on it is the constant `tag`, so the path at
    # word t is follow_t(follow_t+1(... follow_W-1(anything))).
    after = torch.arange(W, device=mask.device)[None, :] >= last[:, None]  # (B, W)
    follow = torch.cat([back, back[:, -1:]], dim=1)  # (B, W, K)
    follow = torch.where(after[:, :, None], tag[:, None, None], follow)  # (B, W, K)
    span = 1
    while span < W:  # now follow[:, t] composes the maps of words t .. t + span - 1
        composed = follow[:, :-span].gather(2, follow[:, span:])  # (B, W - span, K)
        follow = torch.cat([composed, follow[:, -span:]], dim=1)  # (B, W, K)
        span *= 2
    return best, follow[:, :, 0]  # (B,), (B, W)
