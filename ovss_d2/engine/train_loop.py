"""The training step: one batch, autocast (fp16 with a gradient scaler on CUDA, bf16 anywhere),
backward, optimizer step; the model's random draws seeded per iteration so resumes are exact."""
import time

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def step_seed(seed: int, iteration: int, rank: int) -> int:
    return (seed * 2_147_483 + iteration * 104_729 + rank * 7_907 + 1) % (2**31 - 1)


class OVSSTrainLoop(SimpleTrainer):
    """SimpleTrainer with AMP on CUDA or CPU and per-iteration seeding.

    Args:
        amp: enable autocast.
        amp_dtype: "float16" (CUDA only, uses a GradScaler) or "bfloat16".
        seed: base seed; < 0 leaves the RNGs alone (then a resumed run is not bit-identical).
    """

    def __init__(self, model, data_loader, optimizer, *, amp: bool = False, amp_dtype: str = "float16",
                 seed: int = -1):
        super().__init__(model, data_loader, optimizer)
        param = next(model.parameters())
        self.device_type = "cuda" if param.is_cuda else "cpu"
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"SOLVER.AMP.DTYPE={amp_dtype!r}: use one of {sorted(AMP_DTYPES)}.")
        if amp and self.device_type == "cpu" and amp_dtype == "float16":
            raise ValueError("AMP on the CPU supports bfloat16 only: set SOLVER.AMP.DTYPE bfloat16.")
        self.amp, self.amp_dtype, self.seed = amp, AMP_DTYPES[amp_dtype], seed
        use_scaler = amp and self.device_type == "cuda" and amp_dtype == "float16"
        self.grad_scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def set_data_loader(self, data_loader) -> None:
        self.data_loader = data_loader
        self._data_loader_iter = iter(data_loader)

    def run_step(self):
        assert self.model.training, "[OVSSTrainLoop] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.seed >= 0:
            torch.manual_seed(step_seed(self.seed, self.iter, comm.get_rank()))
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            loss_dict = self.model(data)
        losses = sum(v.float() for v in loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.unscale_(self.optimizer)  # so gradient clipping sees true gradients
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            self.optimizer.step()
        self._write_metrics(loss_dict, data_time)

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
