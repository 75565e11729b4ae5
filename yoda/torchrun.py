"""torchrun's environment, read in one place: RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous (and the wait for
its host). No torch.

Work reads them strictly (env_int, dist_env: a value that is not an integer is a UserError naming it); messages
read them leniently (main_rank, rank_prefix: a message about another error must not fail on a bad variable).
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import time

from .console import error_line
from .errors import UserError


def env_int(name: str, default: int) -> int:
    """The integer environment variable ``name`` (torchrun's RANK, WORLD_SIZE, LOCAL_RANK), else ``default``
    (unset or empty, as an empty YODA_MAX_PIXELS: `RANK= yoda upscale ...` was refused as "got ''")."""
    value = os.environ.get(name) or str(default)
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer (as torchrun sets it), got {value!r}") from None


def dist_env() -> tuple[int, int]:
    """(rank, world size) under torchrun (RANK / WORLD_SIZE in the environment), else (0, 1); a UserError unless
    0 <= RANK < WORLD_SIZE (RANK=1 alone upscaled every input and counted "5 written ... of 4 inputs")."""
    rank, world = env_int("RANK", 0), env_int("WORLD_SIZE", 1)
    if world > 1 and not os.environ.get("RANK"):  # every process took rank 0 (yoda train: torch's own error)
        raise UserError(f"WORLD_SIZE={world} without RANK: each process needs its rank (torchrun sets both); run "
                        "under torchrun, or unset WORLD_SIZE")
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} do not go together: RANK must be in [0, WORLD_SIZE) "
                        "(torchrun sets both)")
    return rank, world


def rendezvous(world: int) -> tuple[str, int, bool, str]:
    """(MASTER_ADDR, MASTER_PORT, whether torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE), this
    run's name: TORCHELASTIC_RUN_ID/TORCHELASTIC_RESTART_COUNT); a UserError without an address to meet at."""
    addr = os.environ.get("MASTER_ADDR")
    if not addr or not os.environ.get("MASTER_PORT"):
        raise UserError(f"WORLD_SIZE={world}, but MASTER_ADDR / MASTER_PORT are not set, so the ranks cannot meet; "
                        "run under torchrun, or unset WORLD_SIZE")
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '')}"
    return addr, env_int("MASTER_PORT", 0), os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True", run


HOST_POLL_S = 0.2  # seconds between wait_for_host's tries
HOST_WAIT_S = 300.0  # how long a rank waits for the store's host (rank 0, or torchrun's agent) to answer


def wait_for_host(addr: str, port: int) -> None:
    """Until something listens at addr:port, tried in Python every HOST_POLL_S: TCPStore's own connect waits in C++
    (up to its 5-minute timeout, with stack dumps at each retry), where Ctrl-C and SIGTERM could not end it."""
    deadline = time.monotonic() + HOST_WAIT_S
    while True:
        try:
            socket.create_connection((addr, port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"nothing answers at MASTER_ADDR:MASTER_PORT {addr}:{port} after {HOST_WAIT_S:g} s: "
                                "is rank 0 running (or torchrun's agent)?") from None
            time.sleep(HOST_POLL_S)


# seconds between wait_for_keys' looks at the store (a rank sleeps in between, in Python, so that Ctrl-C and SIGTERM
# end the wait at once: a blocking collective held it in C++ until torchrun killed it 30 s later)
MEET_POLL_S = 0.2
WAIT_NOTE_S = 10.0  # after this long, wait_for_keys says once what it waits for


def meeting_store(rank: int, world: int, purpose: str):
    """(store, whether this process hosts it): the key-value store the ranks meet in, torchrun's own
    (TORCHELASTIC_USE_AGENT_STORE), else one rank 0 hosts at MASTER_ADDR:MASTER_PORT as torch's env:// rendezvous
    makes it, without waiting there for the others (wait_for_keys does, in Python); keys under ``purpose`` and
    this run's name. The other ranks wait for the host in Python too (wait_for_host). A wait in TCPStore's or
    init_process_group's C++ could last torch's 30-minute timeout, and neither Ctrl-C nor SIGTERM ended it."""
    import torch.distributed as dist

    addr, port, agent_store, run = rendezvous(world)
    host = rank == 0 and not agent_store
    if not host:
        wait_for_host(addr, port)
    store = dist.TCPStore(addr, port, world, is_master=host, wait_for_workers=False,
                          timeout=datetime.timedelta(minutes=5),
                          **({"use_libuv": False} if sys.platform == "win32" else {}))  # Windows builds lack libuv
    return dist.PrefixStore(f"{purpose}/{run}", store), host


def wait_for_keys(store, keys: list, rank: int = 0, waiting: str = "") -> None:
    """Until every key is in ``store``: polled, so that a signal ends the wait (KeyboardInterrupt, Terminated).
    After WAIT_NOTE_S, rank ``rank`` says once on stderr ``waiting``, "{ranks}" replaced by the ranks whose
    "<prefix>/<rank>" keys are missing ("" : nothing said)."""
    start, said = time.monotonic(), not waiting
    while not store.check(keys):
        if not said and time.monotonic() - start > WAIT_NOTE_S:
            said = True
            missing = [k.rpartition("/")[2] for k in keys if not store.check([k])]
            ranks = f"rank{'s' * (len(missing) > 1)} {', '.join(missing)}"
            error_line(f"yoda: note: rank {rank}: {waiting.format(ranks=ranks)}")
        time.sleep(MEET_POLL_S)


JOIN_NOTE = "waiting for {ranks} to join (one that never comes: stop with Ctrl-C)"  # wait_for_keys before the work


def quiet_cpp_logs(argv: list, environ=os.environ) -> None:
    """Under torchrun, torch's C++ logs at ERROR unless the user set TORCH_CPP_LOG_LEVEL or asked for --debug: a rank
    whose store's host went away printed c10d's warning and a 25-line C++ stack trace ("sendBytes failed ...")
    before yoda's one line. Read when torch loads, so set before it does (``python -m yoda``)."""
    if under_torchrun() and "TORCH_CPP_LOG_LEVEL" not in environ and "--debug" not in argv:
        environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"


def under_torchrun() -> bool:
    """Whether torchrun started this process (its TORCHELASTIC_RUN_ID, set for one rank too), or WORLD_SIZE > 1."""
    return "TORCHELASTIC_RUN_ID" in os.environ or launched_world() not in ("", "1")


def main_rank() -> bool:
    """Whether this process says what every rank would say: rank 0, or no torchrun (lenient)."""
    return os.environ.get("RANK", "0") in ("", "0")


def launched_world() -> str:
    """WORLD_SIZE as torchrun set it ("1" without torchrun), for messages (lenient)."""
    return os.environ.get("WORLD_SIZE", "1")


def rank_prefix() -> str:
    """"rank R: " under torchrun (WORLD_SIZE > 1), so that each rank's closing line says whose it is; else ""."""
    rank = os.environ.get("RANK", "")
    return f"rank {rank}: " if rank and launched_world() not in ("", "1") else ""


# what a collective raises when the rank at the other end has ended (gloo's tcp pair, NCCL's abort)
LOST_PEER = re.compile(r"Connection closed by peer|Connection reset by peer|NCCL communicator was aborted")


def lost_rank(e: BaseException) -> str:
    """Under torchrun, the words of ``e`` (a RuntimeError: what torch.distributed's collectives raise, its DistError
    among them; not an OSError of the user's) that say another rank ended (killed, out of memory) in a collective
    this rank was in (gloo: "Connection closed by peer"), or that the store the ranks meet at is gone (a
    DistNetworkError: its host, rank 0 or torchrun's own agent, was killed; "Broken pipe"), else "": not a bug of
    this rank, which cannot go on."""
    if not isinstance(e, RuntimeError) or launched_world() in ("", "1"):
        return ""
    if any(k.__name__ == "DistNetworkError" for k in type(e).__mro__):  # (by name: this module imports no torch)
        last = str(e).strip().splitlines()[-1:]
        why = last[0].rsplit(": ", 1)[-1] if last else ""
        why = why if len(why) <= 120 else why[:119] + "…"  # (cut at 80: "... Did the remote server")
        return "the ranks' store is gone" + (f": {why}" if why else "")
    found = LOST_PEER.search(str(e))
    return found.group(0) if found else ""
