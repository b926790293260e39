"""DistributedDataParallel with reversible models: 2 CPU processes (gloo, 127.0.0.1 only).

# NOTE [ The honest single-process reference for DDP with BatchNorm ]
# Under DDP every rank normalises with the statistics of its own share of the global batch
# (SyncBatchNorm, which would pool them, runs only on GPUs). A single process fed the whole
# global batch would normalise with pooled statistics and legitimately get other gradients, so
# it is not the reference. The reference is a single process that runs the same per-rank
# shares: forward each share separately (BatchNorm in training mode, its own batch statistics),
# and back-propagate the mean of the per-share losses. DDP averages the per-rank gradients,
# and the gradient of the mean of the losses is exactly that average. Parameters must then
# agree after every step up to the rounding of a different summation order; the test also
# checks that the two ranks hold identical parameters, and runs two steps because DDP's
# "marked ready twice" / "expected to have finished reduction" errors surface on the second.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from memprof.train.distributed import DistEnv, build_sampler, detect_dist_env, wrap_model

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny_revnet  # noqa: E402

STEPS = 2
PER_RANK = 4
WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (torch.randn(WORLD * PER_RANK, 3, 16, 16, generator=g), torch.randint(0, 10, (WORLD * PER_RANK,), generator=g))
        for _ in range(steps)
    ]


def _ddp_worker(rank: int, port: int, init_state: dict, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # two processes on a 2-core machine: no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for reversible in (True, False):
            torch.manual_seed(0)
            model = tiny_revnet(reversible=reversible)
            model.load_state_dict(init_state)
            ddp = wrap_model(model, DistEnv(rank, WORLD, rank), torch.device("cpu"))
            assert isinstance(ddp, nn.parallel.DistributedDataParallel)
            assert not ddp.find_unused_parameters
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
            snapshots = []
            for x, y in _data(STEPS):
                xs, ys = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(ddp(xs), ys).backward()
                opt.step()
                snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
            torch.save(snapshots, Path(out_dir) / f"rank{rank}-{'reversible' if reversible else 'plain'}.pt")
    finally:
        dist.destroy_process_group()


def _reference(init_state: dict, reversible: bool) -> list[dict[str, torch.Tensor]]:
    """One process running each rank's share separately; gradient of the mean loss."""
    torch.manual_seed(0)
    model = tiny_revnet(reversible=reversible)
    model.load_state_dict(init_state)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    snapshots = []
    for x, y in _data(STEPS):
        opt.zero_grad(set_to_none=True)
        losses = [
            nn.functional.cross_entropy(model(x[r * PER_RANK:(r + 1) * PER_RANK]), y[r * PER_RANK:(r + 1) * PER_RANK])
            for r in range(WORLD)
        ]
        (sum(losses) / WORLD).backward()
        opt.step()
        snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})
    return snapshots


def test_ddp_two_ranks_match_single_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    init_state = copy.deepcopy(tiny_revnet().state_dict())
    mp.spawn(_ddp_worker, args=(_free_port(), init_state, str(tmp_path)), nprocs=WORLD, join=True)
    for mode in ("reversible", "plain"):
        ranks = [torch.load(tmp_path / f"rank{r}-{mode}.pt") for r in range(WORLD)]
        ref = _reference(init_state, reversible=mode == "reversible")
        for step in range(STEPS):
            for name, want in ref[step].items():
                got = ranks[0][step][name]
                assert torch.equal(got, ranks[1][step][name]), f"{mode}: ranks disagree on {name} at step {step + 1}"
                assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (
                    f"{mode}, step {step + 1}, {name}: max |DDP - reference| = {(got - want).abs().max():.3g}"
                )
            # The steps really moved the parameters (comparing untouched weights proves nothing).
            moved = max((ref[step][n] - init_state[n]).abs().max().item() for n in ref[step])
            assert moved > 1e-3


def test_reversible_parameters_accumulate_once_per_backward() -> None:
    """What DDP's reducer relies on: one gradient accumulation per parameter per backward."""
    model = tiny_revnet(reversible=True)
    counts = {n: 0 for n, _ in model.named_parameters()}
    handles = [
        p.register_post_accumulate_grad_hook(lambda _p, n=n: counts.__setitem__(n, counts[n] + 1))
        for n, p in model.named_parameters()
    ]
    try:
        for _ in range(2):
            model(torch.randn(4, 3, 16, 16)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert set(counts.values()) == {2}, {n: c for n, c in counts.items() if c != 2}


def test_detect_dist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert detect_dist_env() == DistEnv(0, 1, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = detect_dist_env()
    assert env == DistEnv(1, 2, 1) and env.distributed and not env.is_main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        detect_dist_env()


def test_eval_sampler_covers_each_index_once() -> None:
    data = list(range(11))
    shares = [list(build_sampler(data, DistEnv(r, 3, r), shuffle=False, seed=0)) for r in range(3)]
    assert sorted(i for s in shares for i in s) == data
    train = [list(build_sampler(data, DistEnv(r, 3, r), shuffle=True, seed=0)) for r in range(3)]
    assert len({len(s) for s in train}) == 1  # equal step counts on every rank (DDP needs it)


def test_torchrun_cli_two_processes(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m memprof train` end to end, gloo, reversible model."""
    out = tmp_path / "run"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "memprof", "train", "--model", "revvgg", "--synthetic", "--synthetic-size", "40",
        "--epochs", "1", "--batch-size", "4", "--lr", "0.01", "--limit-batches", "1",
        "--device", "cpu", "--out", str(out), "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, row = (out / "train_log.csv").read_text().splitlines()[:2]
    cols = dict(zip(header.split(","), row.split(",")))
    assert int(cols["peak_mem_rank0_bytes"]) > 0 and int(cols["peak_mem_rank1_bytes"]) > 0
    assert "marked ready twice" not in proc.stderr
    assert "accuracy" in proc.stdout  # rank 0 printed the deck's table, once
    assert proc.stdout.count("weighted avg") == 1
    assert (out / "report" / "confusion_matrix.png").stat().st_size > 0
    assert (out / "checkpoints" / "epoch0001.pt").is_file()
