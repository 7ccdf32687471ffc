"""Every workaround for old detectron2 (v0.6, as packaged by ``pb1-detectron2``) and for new
Pillow lives here, so upstream detectron2 (built from source, what GPU users install) runs the same
code paths untouched.

- Pillow >= 10 removed ``Image.LINEAR``; detectron2 v0.6 uses it as a default argument at import
  time (``detectron2/data/transforms/transform.py``), so the alias must exist before that import.
- v0.6's ``launch()`` asserts CUDA and NCCL; ``ovss_d2.engine.launch`` runs gloo on the CPU and
  needs the per-machine process group, which v0.6 keeps in a module global and upstream creates
  with ``comm.create_local_process_group``.
- v0.6's ``SemSegEvaluator`` uses ``np.int`` (gone from NumPy); we do not patch NumPy: ovss-d2 ships
  its own evaluator (``ovss_d2.evaluation``) and never calls that one.
- ``tools/install_env.sh`` applies upstream's own fixes for both (``Image.BILINEAR``, builtin
  ``int``/``float``/``bool``/``str``) to the v0.6 sources it builds, so with that build detectron2
  works in any import order; the alias above is for builds we did not make.
- fvcore (``fvcore.nn.focal_loss``) and detectron2 (``modeling/box_regression.py``, upstream too)
  call ``torch.jit.script`` at import time, which torch now answers with a ``FutureWarning`` on
  every run; that code is never scripted by ovss-d2, so the warning is silenced for those two
  imports only.
"""
import warnings

import PIL.Image

if not hasattr(PIL.Image, "LINEAR"):
    PIL.Image.LINEAR = PIL.Image.BILINEAR

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import fvcore.nn  # noqa: E402,F401
    import detectron2.modeling.box_regression  # noqa: E402,F401

import detectron2  # noqa: E402
from detectron2.utils import comm  # noqa: E402

DETECTRON2_VERSION = getattr(detectron2, "__version__", "unknown")


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the process group of the ranks on this machine (needed by ``comm.get_local_rank``)."""
    if hasattr(comm, "create_local_process_group"):  # upstream detectron2 after v0.6
        comm.create_local_process_group(num_workers_per_machine)
        return
    import torch.distributed as dist

    assert comm._LOCAL_PROCESS_GROUP is None
    world_size = dist.get_world_size()
    machine_rank = dist.get_rank() // num_workers_per_machine
    for i in range(world_size // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
