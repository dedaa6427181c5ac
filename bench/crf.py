"""Speed of crf.py against pytorch-crf and pytorch-struct: NLL forward + backward, and Viterbi.

    python bench/crf.py                          # cuda if available, else cpu
    python bench/crf.py --device cpu --json out.json

Shapes (B, W, K) = (32, 64, 5) and (32, 256, 25), sentence lengths uniform in [W/2, W] with one
of length W, emissions N(0, 1), random gold tags, the same start / end / transition scores on
every side and no BIO constraints (the peers have none). Tasks:

- nll: mean NLL over the batch and its backward pass (to emissions and the CRF scores);
- decode: best paths as tag ids. pytorch-crf returns lists; pytorch-struct returns one-hot
  edges from `.argmax` (a backward pass in the max semiring), turned into tag ids here,
  inside the timing, since that is what a tagger needs.

pytorch-struct's `LinearChainCRF` has no start or end scores: its potentials (B, W-1, K, K) are
[b, n, next tag, previous tag] (see `LinearChain.to_parts`), so start + first emission are
folded into edge 0 and the end score into each sentence's last edge (n = length - 2).

Each measurement: warm-up calls (one only for a side slower than --budget / 10), then up to
--repeats timed calls, round-robin over the sides so that noise from other processes hits all
alike. A side stops once its timed calls add up to --budget seconds, or to 3 budgets if it has
fewer than 3 calls (pytorch-struct is slow on CPU). The median is reported, with ratio = peer
ms / ours ms. On CUDA each call ends with torch.cuda.synchronize(). On CPU, --threads defaults
to the CPUs this process may use. Needs the bench extras pytorch-crf and torch-struct.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchcrf
from torch_struct import LinearChainCRF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from crf import CRF

SHAPES = [(32, 64, 5), (32, 256, 25)]
warnings.filterwarnings("ignore", message=".*arg_constraints")  # torch_struct's, harmless
SIDES = ["ours", "pytorch-crf", "pytorch-struct"]


def make_inputs(B: int, W: int, K: int, device: str, seed: int = 0):
    """emissions (B, W, K) requiring grad, tags (B, W) long, mask (B, W) bool, lengths (B,)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(W // 2, W + 1, (B,), generator=g)
    lengths[0] = W
    mask = torch.arange(W)[None, :] < lengths[:, None]
    emissions = torch.randn(B, W, K, generator=g)
    tags = torch.randint(0, K, (B, W), generator=g)
    return (
        emissions.to(device).requires_grad_(),
        tags.to(device),
        mask.to(device),
        lengths.to(device),
    )


def struct_potentials(crf: CRF, emissions, lengths):
    """pytorch-struct's edge potentials (B, W-1, K, K) [b, n, next, prev], our scores folded in."""
    W = emissions.shape[1]
    edges = crf.transitions.T + emissions[:, 1:, :, None]  # (B, W-1, K next, K prev)
    first = (crf.start + emissions[:, 0])[:, None, None, :]  # (B, 1, 1, K prev) word 0
    edges = torch.cat([edges[:, :1] + first, edges[:, 1:]], dim=1)
    last = torch.arange(W - 1, device=emissions.device) == (lengths - 2)[:, None]  # (B, W-1)
    return (edges + last[:, :, None, None] * crf.end[None, None, :, None]).contiguous()


def struct_tags(edges, mask):
    """Tag ids (B, W) from pytorch-struct's one-hot argmax edges (B, W-1, K next, K prev)."""
    first = edges[:, :1].sum(2).argmax(-1)  # (B, 1) the previous tag of edge 0
    rest = edges.sum(3).argmax(-1)  # (B, W-1) the next tag of each edge
    return torch.cat([first, rest], dim=1).masked_fill(~mask, 0)


def tasks(crf: CRF, peer: torchcrf.CRF, emissions, tags, mask, lengths):
    """{task: {side: callable}}; each call does one full NLL + backward or one decoding."""

    def ours_nll():
        crf.nll(emissions, tags, mask).backward()

    def peer_nll():
        (-peer(emissions, tags, mask, reduction="mean")).backward()

    def struct_nll():
        edges = struct_potentials(crf, emissions, lengths)  # (B, W-1, K, K)
        log_z = LinearChainCRF(edges, lengths=lengths).partition  # (B,)
        index = (tags[:, 1:] * edges.shape[-1] + tags[:, :-1])[:, :, None]  # (B, W-1, 1)
        gold = edges.flatten(2).gather(2, index).squeeze(2)  # (B, W-1) gold edge scores
        gold = torch.where(mask[:, 1:], gold, 0.0).sum(1)  # (B,)
        (log_z - gold).mean().backward()

    def struct_decode():
        edges = struct_potentials(crf, emissions.detach(), lengths)
        return struct_tags(LinearChainCRF(edges, lengths=lengths).argmax, mask)

    return {
        "nll": {"ours": ours_nll, "pytorch-crf": peer_nll, "pytorch-struct": struct_nll},
        "decode": {
            "ours": lambda: crf.decode(emissions, mask)[0],
            "pytorch-crf": lambda: peer.decode(emissions, mask),
            "pytorch-struct": struct_decode,
        },
    }


def check_agreement(crf, peer, emissions, tags, mask, lengths, decoders) -> None:
    """Stop if the three sides disagree on the NLL or on the decoded paths."""
    ours = crf.nll(emissions, tags, mask).item()
    theirs = -peer(emissions, tags, mask, reduction="mean").item()
    if abs(theirs - ours) > 1e-4 * abs(ours):
        sys.exit(f"NLL disagrees: ours {ours:.5f}, pytorch-crf {theirs:.5f}")
    log_z = crf.log_partition(emissions, mask)  # (B,)
    edges = struct_potentials(crf, emissions, lengths)
    struct = LinearChainCRF(edges, lengths=lengths).partition  # (B,)
    if not torch.allclose(struct, log_z, rtol=1e-4):
        sys.exit(f"log Z disagrees: ours {log_z.tolist()}, pytorch-struct {struct.tolist()}")
    paths = decoders["ours"]().cpu()
    peer_paths = decoders["pytorch-crf"]()
    struct_paths = decoders["pytorch-struct"]().cpu()
    for b, n in enumerate(mask.sum(1).tolist()):
        if paths[b, :n].tolist() != peer_paths[b] or not torch.equal(paths[b], struct_paths[b]):
            sys.exit(f"decoded paths disagree in sentence {b}")


def measure(calls: dict[str, Callable], device: str, warmup: int, repeats: int, budget: float):
    """Median milliseconds per side and the number of timed calls behind each."""

    def timed(call) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for call in calls.values():  # a slow side warms up once only
        if timed(call) < budget / 10:
            for _ in range(warmup - 1):
                timed(call)

    def more(t: list[float]) -> bool:  # 3 calls if they fit in 3 budgets, else stop at budget
        return sum(t) < budget or (len(t) < 3 and sum(t) < 3 * budget)

    times: dict[str, list[float]] = {side: [] for side in calls}
    for _ in range(repeats):
        for side, call in calls.items():
            if more(times[side]):
                times[side].append(timed(call))
    return {side: 1e3 * statistics.median(t) for side, t in times.items()}, {
        side: len(t) for side, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per side")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per side, at most")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per side and task")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads (all)"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU, torch threads: {torch.get_num_threads()}"
    )
    print(f"{device_name}, torch {torch.__version__}; median ms, ratio = peer / ours")
    print(f"{'B, W, K':>12} {'task':>7} {'ours':>9} {'pytorch-crf':>19} {'pytorch-struct':>19}")
    rows = []
    for B, W, K in SHAPES:
        torch.manual_seed(0)
        crf = CRF(K).to(args.device)
        peer = torchcrf.CRF(K, batch_first=True).to(args.device)
        with torch.no_grad():
            peer.start_transitions.copy_(crf.start)
            peer.end_transitions.copy_(crf.end)
            peer.transitions.copy_(crf.transitions)
        inputs = make_inputs(B, W, K, args.device)
        work = tasks(crf, peer, *inputs)
        check_agreement(crf, peer, *inputs, work["decode"])
        for task, calls in work.items():
            ms, counts = measure(calls, args.device, args.warmup, args.repeats, args.budget)
            ratios = {side: ms[side] / ms["ours"] for side in SIDES[1:]}
            rows.append(
                {"shape": [B, W, K], "task": task, "ms": ms, "calls": counts, "ratio": ratios}
            )
            peers = "".join(f" {ms[s]:10.2f} ({ratios[s]:5.1f}x)" for s in SIDES[1:])
            print(f"{f'{B}, {W}, {K}':>12} {task:>7} {ms['ours']:9.2f}{peers}", flush=True)
    if args.json:
        figures = {"device": device_name, "torch": torch.__version__, "args": vars(args)}
        Path(args.json).write_text(json.dumps({**figures, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
