"""Multi-process launch on GPUs (detectron2's NCCL launch) or, without GPUs, on the CPU over gloo
(detectron2 v0.6's launch requires CUDA)."""
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from .. import compat

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(main_func, num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url=None, args=(), timeout=DEFAULT_TIMEOUT):
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    With CUDA this is detectron2's launch (one process per GPU, NCCL). Without CUDA,
    ``num_gpus_per_machine`` is the number of CPU processes per machine, joined over gloo;
    ``dist_url="auto"`` picks a free local port (single machine).
    """
    if torch.cuda.is_available():
        return d2_launch(main_func, num_gpus_per_machine, num_machines, machine_rank, dist_url,
                         args=args, timeout=timeout)
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        return main_func(*args)
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url='auto' works on one machine only; give --dist-url tcp://HOST:PORT.")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _cpu_worker, nprocs=num_gpus_per_machine, join=True, start_method="spawn",
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
    )


def _cpu_worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout):
    rank = machine_rank * num_per_machine + local_rank
    try:
        dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout)
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    compat.create_local_process_group(num_per_machine)
    # Share the cores instead of every process using all of them.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    comm.synchronize()
    try:
        main_func(*args)
        # every rank done before any tears gloo down: a rank whose peer closed its connections
        # mid-teardown can abort ("terminate called without an active exception"), seen under load
        comm.synchronize()
    finally:
        dist.destroy_process_group()
