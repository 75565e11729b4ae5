"""Data-parallel training (issue 12 item 4): 2 gloo ranks on the CPU against one process.

The ranks must see exactly their share of the single process's global batch, and their DDP-averaged steps must
give the single process's weights, EMA, optimizer state and logged losses within float tolerance (the masked
loss divides by the global count). Resume works with the ranks, and a checkpoint of 2 ranks resumes in one
process. Run as a script under torchrun (``_worker``), this file is also the ranks' program: one launch (the
start-up of 2 ranks is most of the time) runs `yoda train` as `python -m yoda` would, then a Trainer with a resume.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import torch

from yoda._io import folder_lock
from yoda.cli import main
from yoda.training import LossConfig, Ranks, TrainConfig, Trainer, diffusion_loss, step_taus
from yoda.training.distributed import local_batch

pytestmark = pytest.mark.usefixtures("one_thread")  # the single-process references: small forwards, 2 shared cores

TINY_SR3 = {
    "kind": "sr3", "in_channel": 6, "out_channel": 3, "inner_channel": 8, "norm_groups": 4,
    "channel_mults": [1, 2], "attn_res": [], "res_blocks": 1, "dropout": 0.0, "with_noise_level_emb": True,
    "image_size": 16, "mid_attn": False, "scale": 4,
}
TINY_SRDIFF = {"kind": "srdiff", "hidden_size": 8, "dim_mults": [1, 2], "rrdb_num_block": 2, "rrdb_num_feat": 8}

# Float tolerance of N ranks vs one process: the gradients are summed in another order (and the convolutions
# run at another batch size), ~1e-7 relative; AdamW's first steps divide by |g|, so a parameter whose gradient
# is near 0 moves by up to a few % of lr differently. Measured: <= 1e-5 with lr 1e-3 after 4 steps. A wrong
# share or loss normalisation moves parameters by ~lr (1e-3).
ATOL = 1e-4


def _images(folder):
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    os.makedirs(folder, exist_ok=True)
    for i in range(3):
        arr = (torch.rand(40, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(os.path.join(folder, f"im{i}.png"))
    return folder


def _config(folder, **kw) -> dict:
    base = dict(name="ddp", model=TINY_SR3, schedule={"kind": "linear", "T": 50, "beta_start": 1e-3, "beta_end": 0.1},
                data={"source": folder, "crop": 16, "scale": 4, "val_source": folder, "val_crops": 0, "val_crop": 16},
                loss={"mask_input": True, "mask_loss": True}, batch=4, steps=3, lr=1e-3, log_every=1, ckpt_every=2,
                ema_decay=0.9)
    base.update(kw)
    return base


def _torchrun(args, cwd, nproc=2):
    """`python -m torch.distributed.run --nproc_per_node nproc ARGS` on 127.0.0.1 (gloo), one thread a rank."""
    # --standalone: the agent's store binds port 0 itself (a port picked here first could be taken before it binds)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    with tempfile.TemporaryDirectory() as tmp:  # torchrun's torchelastic_* log folders go there, not into /tmp
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": tmp}
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)  # torchrun and its ranks: no rank left waiting on a collective
            stdout, stderr = p.communicate()
            pytest.fail("torchrun timed out:\n" + stdout[-2000:] + stderr[-4000:])
    assert p.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return stdout


def _record_inputs(trainer, seen: list) -> None:
    """Every tensor the bare model is called with (its inputs depend only on the drawn data, not on the weights)."""
    trainer.model.register_forward_pre_hook(
        lambda m, args: seen.append([a.detach().clone() for a in args if torch.is_tensor(a)]))


def _assert_states_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=ATOL, msg=lambda m: f"{what}.{k}: {m}")


def _assert_opt_close(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()  # the same parameters have a state (unused ones have none)
    for i in a["state"]:
        for k in ("step", "exp_avg"):  # exp_avg_sq squares gradients of ~1e-6: compared via the weights
            torch.testing.assert_close(a["state"][i][k], b["state"][i][k], rtol=1e-3, atol=1e-6)


def _worker(folder: str) -> None:
    """One rank under torchrun, in ``folder``: `yoda train --config cli.json --out cli` (yoda.cli.main, what
    `torchrun -m yoda train` runs), then on trainer.json: train 2 steps, resume (a new Trainer reads rank 0's
    checkpoint) to cfg.steps, and save what this rank's model saw and its final state to multi/rank<r>.pt."""
    from yoda.training.distributed import env_ranks, process_group

    torch.set_num_threads(1)
    os.chdir(folder)
    ranks = env_ranks()
    cfg, out = TrainConfig.load("trainer.json"), "multi"
    seen: list = []
    with process_group(ranks, torch.device("cpu")):  # one group: `yoda train` uses it as it finds it
        assert main(["train", "--config", "cli.json", "--out", "cli", "-q"]) == 0
        # --out held by another process (here rank 0 itself, through another open of the folder: flock tells them
        # apart as it tells processes apart): every rank refuses, not rank 0 alone (the others waited for it in
        # the first collective until torchrun killed them, or until the collective's time-out)
        os.makedirs("busy", exist_ok=True)
        with folder_lock("busy", "--out") if ranks.main else contextlib.nullcontext():
            assert main(["train", "--config", "cli.json", "--out", "busy", "-q"]) == 2
        tr = Trainer(cfg, out, device="cpu", progress=False, ranks=ranks)
        _record_inputs(tr, seen)
        tr.run(steps=2)
        tr = Trainer(cfg, out, device="cpu", progress=False, ranks=ranks)  # resumes at step 2 on every rank
        assert tr.step == 2, tr.step
        _record_inputs(tr, seen)
        tr.run()
        torch.save({"seen": seen, "model": tr.model.state_dict(), "ema": tr.ema.state_dict(),
                    "opt": tr.opt.state_dict(), "rows": tr.rows, "gen": tr.gen.get_state()},
                   os.path.join(out, f"rank{ranks.rank}.pt"))
        # a time-out on rank 0 alone (--minutes): every rank stops after the same step
        tr.run(steps=50, max_seconds=0.0 if ranks.main else None)
        torch.save({"step": tr.step}, os.path.join(out, f"timeout{ranks.rank}.pt"))
        # SIGTERM to rank 1 alone (a job manager may signal one process): every rank stops after the same step and
        # knows the signal (rank 0 took the --minutes branch and crashed on minutes=None)
        start, real_step = tr.step, tr.train_step

        def step_then_sigterm():
            loss = real_step()
            if ranks.rank == 1 and tr.step == start + 1:
                signal.raise_signal(signal.SIGTERM)  # to this (main) thread, not to a gloo thread in a recv
            return loss

        tr.train_step = step_then_sigterm
        s = tr.run(steps=60)
        torch.save({"step": tr.step - start, "signal": s["signal"]}, os.path.join(out, f"sigterm{ranks.rank}.pt"))
        tr.close()  # its DDP wrapper goes before the group (yoda.training.report.train_main does the same)
        # dropout on 2 ranks: 4 steps straight, and 2 steps + a resume to 4 (each rank's masks from where it was)
        drop = TrainConfig.load("dropout.json")
        for name, stops in (("drop_full", (4,)), ("drop_resumed", (2, 4))):
            for n in stops:
                tr = Trainer(drop, name, device="cpu", progress=False, ranks=ranks)
                tr.run(steps=n)
                tr.close()
            torch.save(tr.model.state_dict(), os.path.join(name, f"rank{ranks.rank}.pt"))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(folder, configs, torchrun's stdout) of one launch of _worker on 2 gloo ranks."""
    tmp = tmp_path_factory.mktemp("ddp")
    folder = _images(str(tmp / "imgs"))
    configs = {"cli": _config(folder),  # SR3, YODA input mixing + masked L1 loss
               "trainer": _config(folder, model=TINY_SRDIFF, steps=4, warmup=3, grad_clip=0.05,
                                  loss={"space": "residual", "mask_loss": True, "loss": "l2", "target": "x0"}),
               "dropout": _config(folder, model={**TINY_SR3, "dropout": 0.3}, steps=4, ckpt_every=2)}
    for name, d in configs.items():
        (tmp / f"{name}.json").write_text(json.dumps(d))
    stdout = _torchrun([os.path.abspath(__file__), "--worker", str(tmp)], tmp)
    return tmp, configs, stdout


def test_two_gloo_ranks_see_their_share_and_match_one_process(two_ranks, tmp_path):
    """SRDiff in the residual space (its RRDB tail gets no gradient), masked L2 loss, lr warm-up and an active grad
    clip, 4 steps with a resume at step 2 on 2 ranks: rank r's model is called on exactly the samples 2r, 2r + 1
    of the single process's global batch of 4 (bit-identical inputs), and both ranks end with the single
    process's weights, EMA, optimizer state, generator and logged losses."""
    tmp, configs, _ = two_ranks
    cfg = TrainConfig.from_dict(configs["trainer"])
    ref = Trainer(cfg, str(tmp_path / "single"), device="cpu", progress=False)
    seen: list = []
    _record_inputs(ref, seen)
    ref.run()
    assert ref.model.rrdb.conv_last.weight.grad is None  # the parameters DDP must leave alone
    ranks = [torch.load(tmp / "multi" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r, got in enumerate(ranks):
        assert len(got["seen"]) == len(seen) == 4
        for step, (mine, full) in enumerate(zip(got["seen"], seen)):
            assert mine[0].shape[0] == 2, "each rank runs batch / world samples"
            for a, b in zip(mine, full):
                assert torch.equal(a, b[2 * r: 2 * r + 2]), f"rank {r}, step {step + 1}: not its share of the batch"
        _assert_states_close(got["model"], ref.model.state_dict(), f"rank {r} model")
        _assert_states_close(got["ema"], ref.ema.state_dict(), f"rank {r} ema")
        _assert_opt_close(got["opt"], ref.opt.state_dict())
        assert torch.equal(got["gen"], ref.gen.get_state())
        assert [row["step"] for row in got["rows"]] == [1, 2, 3, 4]
        for mine, full in zip(got["rows"], ref.rows):
            assert mine["loss"] == pytest.approx(full["loss"], rel=1e-5)
            assert mine["lr"] == full["lr"]
    assert [torch.load(tmp / "multi" / f"timeout{r}.pt")["step"] for r in range(2)] == [5, 5]
    assert [torch.load(tmp / "multi" / f"sigterm{r}.pt") for r in range(2)] == [{"step": 1, "signal": 15}] * 2
    # the weights moved by many times the tolerance: the comparison above is not vacuous
    init = Trainer(cfg, str(tmp_path / "init"), device="cpu", progress=False, resume=False).model.state_dict()
    moved = max((ref.model.state_dict()[k] - init[k]).abs().max().item() for k in init)
    assert moved > 20 * ATOL


def test_torchrun_yoda_train_writes_once_and_resumes_in_one_process(two_ranks, tmp_path):
    """`yoda train --config` on 2 ranks (SR3, YODA input mixing + masked L1 loss): rank 0 alone writes the run's
    files (one 'trained' line, no temporary files left), the checkpoint equals one process's run within float
    tolerance, and it resumes in a single process to the same weights as an uninterrupted one."""
    tmp, configs, stdout = two_ranks
    d = configs["cli"]
    assert stdout.count("trained 3 steps") == 1, stdout
    multi = tmp / "cli"
    assert sorted(os.listdir(multi)) == ["TRAINING.md", "checkpoint.pt", "config.json", "log.csv", "model.safetensors"]
    assert "2 processes (torchrun, DistributedDataParallel, 2 samples each)" in (multi / "TRAINING.md").read_text()

    cfg = TrainConfig.from_dict(d)
    ref = Trainer(cfg, str(tmp_path / "single"), device="cpu", progress=False)
    ref.run()
    st = torch.load(multi / "checkpoint.pt", weights_only=True)
    assert st["step"] == 3
    _assert_states_close(st["model"], ref.model.state_dict(), "model")
    _assert_states_close(st["ema"], ref.ema.state_dict(), "ema")
    assert [r["loss"] for r in st["rows"]] == pytest.approx([r["loss"] for r in ref.rows], rel=1e-5)
    # the 2-rank checkpoint resumes in one process (the generator does not depend on the number of ranks)
    shutil.copytree(multi, tmp_path / "resumed")
    resumed = Trainer(cfg, str(tmp_path / "resumed"), device="cpu", progress=False)
    assert resumed.step == 3
    resumed.run(steps=5)
    ref.run(steps=5)
    _assert_states_close(resumed.model.state_dict(), ref.model.state_dict(), "resumed model")


def test_global_batch_must_split_evenly(tmp_path, monkeypatch, capsys):
    assert local_batch(8, 2) == 4 and Ranks(1, 4).shard(8) == slice(2, 4) and Ranks().shard(3) == slice(0, 3)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        local_batch(4, 3)
    with pytest.raises(ValueError, match="bad ranks"):
        Ranks(2, 2)
    folder = _images(str(tmp_path / "imgs"))
    (tmp_path / "cfg.json").write_text(json.dumps(_config(folder, batch=3)))
    # as rank 0 of 2 under torchrun: one line, exit 2, before any process group is set up (it would wait for rank 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "global batch (3, config 'batch') is not divisible by the 2 processes" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    # a Trainer for 2 ranks without a process group is refused
    with pytest.raises(ValueError, match="process group"):
        Trainer(TrainConfig.from_dict(_config(folder)), str(tmp_path / "t"), device="cpu", ranks=Ranks(0, 2))


def test_masked_loss_shares_average_to_the_global_masked_mean():
    """With reduce_count = global count / N, the mean of the shares' masked losses and gradients is the global
    batch's masked mean and its gradient; the mean of the shares' own masked means is not (their counts differ)."""
    g = torch.Generator().manual_seed(0)
    B, N = 4, 2
    x0, c, noise = (torch.randn(B, 3, 8, 8, generator=g) for _ in range(3))
    A = torch.rand(B, 1, 8, 8, generator=g)
    idx, sab = torch.tensor([5, 40, 20, 48]), torch.rand(B, generator=g) * 0.8 + 0.1
    ab = torch.linspace(0.99, 0.01, 50, dtype=torch.float64)
    cfg = LossConfig(mask_loss=True, mask_input=True, lower_bound=0.3)
    w = torch.randn(3, 3, 1, 1, generator=g).requires_grad_(True)
    denoise = lambda x_t, i, s: torch.nn.functional.conv2d(x_t, w)  # noqa: E731
    full = diffusion_loss(denoise, x0, c, A, ab, cfg, idx=idx, sqrt_ab=sab, noise=noise).loss
    (g_full,) = torch.autograd.grad(full, w)
    tau = step_taus(idx, 50, 0.3)
    counts = [((A[s] >= tau[s].view(-1, 1, 1, 1)).sum() * 3).float() for s in (slice(0, 2), slice(2, 4))]
    assert counts[0] != counts[1]
    total = counts[0] + counts[1]
    for reduce, equal in ((lambda n: total / N, True), (None, False)):
        losses, grads = [], []
        for s in (slice(0, 2), slice(2, 4)):
            out = diffusion_loss(denoise, x0[s], c[s], A[s], ab, cfg, idx=idx[s], sqrt_ab=sab[s], noise=noise[s],
                                 reduce_count=reduce).loss
            losses.append(out)
            grads.append(torch.autograd.grad(out, w)[0])
        mean_loss, mean_grad = sum(losses) / N, sum(grads) / N
        assert torch.allclose(mean_loss, full, rtol=1e-6) == equal
        assert torch.allclose(mean_grad, g_full, rtol=1e-5, atol=1e-7) == equal


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:  # a rank of two_ranks, under torchrun
    _worker(sys.argv[2])


def test_rank_device(monkeypatch):
    """One rule for training and `yoda upscale` under torchrun: a CUDA run of several processes puts each rank on
    cuda:LOCAL_RANK modulo the visible GPUs; one process, or the CPU, keeps the device asked for."""
    from yoda.devices import rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device(torch.device("cuda"), 4, 3) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda"), 4, 0) == torch.device("cuda", 0)
    assert rank_device(torch.device("cuda", 1), 1, 3) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu"), 4, 3) == torch.device("cpu")


def test_dropout_ranks_resume_their_own_masks(two_ranks):
    """With dropout each DDP rank draws its own masks from its own generator state. Only rank 0's was saved, and
    a resume reseeded every rank: a run stopped at step 2 and resumed drew step 1's masks again (1.2e-2 off an
    uninterrupted run after 30 steps). Now every rank's state is in the checkpoint: the same weights, bit for bit."""
    tmp, _, _ = two_ranks
    for r in range(2):
        full = torch.load(tmp / "drop_full" / f"rank{r}.pt", weights_only=True)
        resumed = torch.load(tmp / "drop_resumed" / f"rank{r}.pt", weights_only=True)
        assert full.keys() == resumed.keys()
        for k in full:
            assert torch.equal(full[k], resumed[k]), (r, k)
    st = torch.load(tmp / "drop_resumed" / "checkpoint.pt", weights_only=True)
    assert len(st["rank_rng"]) == 2 and not torch.equal(st["rank_rng"][0][0], st["rank_rng"][1][0])


def test_a_rank_waiting_for_rank_0_can_be_stopped(monkeypatch):
    """A rank started without rank 0 (by hand, no torchrun) waited in TCPStore's C++ connect, where neither Ctrl-C
    nor SIGTERM ended it: it waits in Python now (yoda.torchrun.wait_for_host, as upscale's ranks), and says so
    after HOST_WAIT_S."""
    import socket

    import yoda.torchrun
    from yoda.errors import UserError
    from yoda.training.distributed import process_group

    with socket.socket() as s:  # a port nothing listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(yoda.torchrun, "HOST_WAIT_S", 0.3)

    def connect_in_cpp(*a, **k):  # what waited (up to torch's timeout) where no signal ends it
        raise AssertionError("init_process_group was reached before rank 0 answered")

    monkeypatch.setattr(torch.distributed, "init_process_group", connect_in_cpp)
    with pytest.raises(UserError, match=rf"nothing answers at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} after 0.3 s"):
        with process_group(Ranks(rank=1, world=2), torch.device("cpu")):
            pass
    assert not torch.distributed.is_initialized()


def test_rank_0_waiting_for_ranks_that_never_come_says_so_and_a_signal_ends_it(lone_rank_0):
    """Rank 0 of `yoda train` (or one started by hand with WORLD_SIZE=2) waited in init_process_group's C++ for the
    other ranks: 10 minutes without a word, and neither Ctrl-C nor SIGTERM ended it (only SIGKILL; torch's
    timeout is 30 minutes). It waits in the store, in Python: it says for which ranks after WAIT_NOTE_S, and a
    signal ends the wait."""
    err = lone_rank_0("with process_group(Ranks(0, 3), torch.device('cpu')):\n    pass", 3, 2.0,
                      prelude="import torch\nimport yoda.torchrun as t\nt.WAIT_NOTE_S = 0.3\n"
                              "from yoda.training import Ranks\nfrom yoda.training.distributed import process_group\n")
    assert "yoda: note: rank 0: waiting for ranks 1, 2 to join (one that never comes: stop with Ctrl-C)\n" in err


def test_world_size_without_rank_and_a_batch_the_ranks_do_not_split_are_named(tmp_path, monkeypatch, capsys):
    """WORLD_SIZE=2 alone: `yoda train` gave torch's "environment variable RANK expected, but not set" (and with
    MASTER_* set every process took rank 0). A batch of 4 on 3 ranks advised "a batch that is a multiple of 3",
    which a resumed run cannot take (its config is fixed): the rank counts that divide it are named too."""
    folder = _images(str(tmp_path / "imgs"))
    (tmp_path / "cfg.json").write_text(json.dumps(_config(folder)))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for cmd in (["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run"), "-q"],
                ["upscale", str(tmp_path / "imgs" / "train"), "-o", str(tmp_path / "up")]):
        code = main(cmd)
        err = capsys.readouterr().err
        assert code == 2 and err.endswith("WORLD_SIZE=2 without RANK: each process needs its rank (torchrun sets "
                                          "both); run under torchrun, or unset WORLD_SIZE\n"), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "up").exists()
    with pytest.raises(ValueError, match=r"not divisible by the 3 processes: each rank must take the same number of "
                                         r"samples; run on a number of processes that divides it \(1, 2, 4\), or "
                                         r"\(for a new run\) use a batch that is a multiple of 3$"):
        local_batch(4, 3)
