"""Every meta-architecture on every device torch has here.

1. Device hygiene without a GPU: each meta-architecture's forward, loss (and backward) and
   inference with the model and its inputs on a device that is not the CPU (``foreign_device.py``:
   a stand-in that computes on the CPU and refuses what CUDA refuses, plus host copies outside
   the allow-list below), so that a tensor made without ``device=`` fails here and not on a
   user's GPU. A negative control shows that it does. Why not torch's ``meta`` device itself: it
   holds no values, so nothing whose shape depends on data can run there (SED's early rejection
   and ERR-Seg's CRM pick classes with ``topk`` / ``nonzero``, ZeroSeg's group assignment,
   ViL-Seg's K-means, every ``.item()``); the stand-in reports ``meta`` as its device and computes
   on the CPU. What torch cannot do with it, and how the stand-in copes: ``torch.autocast`` has no
   ``meta`` device type (it autocasts as the CPU does); ``torch.tensor(data, device=...)`` and
   Python-list indices are built below the dispatcher (caught one level up, at torch's Python API);
   ``.tolist()`` of a tensor subclass (its own method, counted as a host copy).
2. Device-parametrised tests (``-m cuda`` selects the CUDA half, skipped without a GPU): a
   training step and inference of each meta-architecture on each device against the same model
   on the CPU in fp32; bf16 autocast; fp16 autocast with the gradient scaler (ERR-Seg's configs;
   on the CPU a clear error); a DDP step in a one-process group (gloo on the CPU, NCCL on CUDA)
   against the plain step; no host synchronisation in the forwards the docs call sync-free
   (``torch.cuda.set_sync_debug_mode``).
"""
import copy
import os
import socket
import sys

import pytest
import torch

from foreign_device import DeviceHygieneError, ForeignDevice, ForeignTensor
from helpers import REPO
from ovss_d2.engine import OVSSTrainer, build_optimizer, load_config
from ovss_d2.engine.train_loop import OVSSTrainLoop

sys.path.insert(0, os.path.join(REPO, "tools", "golden"))
from seeded import no_stochastic_layers  # noqa: E402  (tools/golden/seeded.py, plain torch)

METHODS = ["clip_baseline", "sed", "err_seg", "zeroseg", "vil_seg"]
NAMES = ["red square", "green field", "blue sky", "grey road", "white cloud"]

# Where the models copy device data to the host on purpose: name -> (file, function).
HOST_COPY_ALLOW_LIST = {
    # the text-embedding cache keeps one (N, P, D) CPU copy per vocabulary (memory and disk cache);
    # the forward copies it to the device once per vocabulary
    "text-embedding cache": ("ovss_d2/modeling/clip/text_embeddings.py", "compute"),
    # its key: a hash of the text tower's weights, recomputed only after they changed
    "text-embedding cache key": ("ovss_d2/modeling/clip/wrapper.py", "text_fingerprint"),
    # K-means++ seeding draws each next centre with a CPU generator (deterministic on every device);
    # ViL-Seg's K-means clustering at inference (MODEL.VIL_SEG.CLUSTERING kmeans)
    "k-means++ seeding": ("ovss_d2/modeling/clustering/kmeans.py", "kmeans"),
    # ZeroSeg's optional one-to-one matching (not the toy config's): the Hungarian algorithm is SciPy's
    "Hungarian matching": ("ovss_d2/modeling/distillation.py", "one_to_one_matching_loss"),
}

# (config, options) of a tiny random model of each meta-architecture, 64 x 64 working resolution
CONFIGS = {
    "clip_baseline": ("toy/clip_baseline_toy.yaml", ["MODEL.CLIP.FREEZE_IMAGE", "False"]),
    "sed": ("toy/sed_toy.yaml", ["MODEL.SED.CLIP_RESOLUTION", "(64, 64)", "MODEL.SED.EARLY_REJECTION_TOPK", "2"]),
    "err_seg": ("toy/err_seg_toy.yaml", ["MODEL.ERR_SEG.CLIP_RESOLUTION", "(64, 64)", "MODEL.ERR_SEG.TEST_RESOLUTION",
                                         "(64, 64)", "MODEL.ERR_SEG.CRM_TRAIN", "3", "MODEL.ERR_SEG.CRM_TEST", "3"]),
    "zeroseg": ("toy/zeroseg_toy.yaml", ["MODEL.ZEROSEG.TEST_TOPK_CLASSES", "3"]),
    "vil_seg": ("toy/vil_seg_toy.yaml", ["MODEL.CLIP.NAME", "ovss-tiny-vit", "MODEL.VIL_SEG.PROJECTION_DIM", "32",
                                         "MODEL.VIL_SEG.NUM_CLUSTERS", "5"]),
}


def build(method: str, device: str = "cpu", extra=()):
    """A tiny random-weight model (seeded: the same weights on every device) in train mode."""
    config, opts = CONFIGS[method]
    cfg = load_config(os.path.join(REPO, "configs", config), [
        "MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.DEVICE", device,
        "DATALOADER.NUM_WORKERS", "0", *opts, *extra])
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(cfg)
    model.train_class_names = list(NAMES)
    model.set_vocabulary(NAMES)
    return cfg, model


def train_batch(method: str, n: int = 2):
    """A training batch of ``n`` items as the method's data loader gives them (CPU tensors)."""
    g = torch.Generator().manual_seed(1)
    size = 64 if method != "vil_seg" else 96

    def image(s=size):
        return torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=g)

    if method == "zeroseg":
        return [{"image": image()} for _ in range(n)]
    if method == "vil_seg":
        return [{"image": image(), "iic_image": image(), "iic_flipped": i % 2 == 0, "local_views":
                 torch.stack([image(32) for _ in range(2)]), "caption": f"a {NAMES[i]} beside a {NAMES[i + 1]}."}
                for i in range(n)]
    return [{"image": image(), "sem_seg": torch.randint(0, len(NAMES), (size, size), generator=g)} for _ in range(n)]


def test_inputs(h: int = 45, w: int = 61):
    g = torch.Generator().manual_seed(2)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}]


test_inputs.__test__ = False  # a helper, not a test


def on(x, device):
    return x.to(device) if isinstance(x, torch.Tensor) else x


# ---- 1. device hygiene on the CPU ---------------------------------------------------------------
def run_on_foreign_device(model, method, allow=HOST_COPY_ALLOW_LIST):
    """Loss, backward and inference with the model on the foreign device and its inputs on the CPU,
    as a data loader gives them (the model moves them), then inference on inputs already on the
    device; returns the ForeignDevice (its host copies and violations), the losses and the class
    probabilities."""
    with ForeignDevice(allow) as dev:
        dev.put(model)
        model.train()
        torch.manual_seed(0)
        losses = model(train_batch(method))
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            out = model(test_inputs())
            # inputs already on the device (a user's own loader): the same result
            again = model([{k: on(v, dev.device) for k, v in x.items()} for x in test_inputs()])
        assert torch.equal(again[0]["sem_seg"].elem, out[0]["sem_seg"].elem)
    return dev, losses, out


# the paths the toy configs leave out: ViL-Seg's K-means clustering, ZeroSeg's other matchings
VARIANTS = [(m, ()) for m in METHODS] + [
    ("vil_seg", ("MODEL.VIL_SEG.CLUSTERING", "kmeans")),
    ("zeroseg", ("MODEL.ZEROSEG.MATCHING", "one_to_one")),
    ("zeroseg", ("MODEL.ZEROSEG.MATCHING", "nearest")),
]


# the allow-list entries each variant must use (so that none stays on the list unused); the cache
# itself copies only when its disk cache misses
USED_ALLOW_LIST = {"vil_seg kmeans": {"k-means++ seeding"}, "zeroseg one_to_one": {"Hungarian matching"}}


@pytest.mark.parametrize("method, extra", VARIANTS, ids=[" ".join((m, *e[1:])) for m, e in VARIANTS])
def test_every_tensor_of_the_forward_lives_on_the_models_device(method, extra):
    """No tensor made on the CPU meets the model's device in the training forward, loss, backward or
    inference (on a GPU: "Expected all tensors to be on the same device"), and device data goes to
    the host only where the allow-list says; the numbers equal the plain CPU run's."""
    _, model = build(method, extra=extra)
    reference = copy.deepcopy(model)
    dev, losses, out = run_on_foreign_device(model, method)
    assert dev.violations == []
    variant = " ".join((method, *extra[1:]))
    assert {"text-embedding cache key"} | USED_ALLOW_LIST.get(variant, set()) <= set(dev.host_copies)
    assert all(isinstance(v, ForeignTensor) for v in losses.values())
    assert all(isinstance(p, ForeignTensor) for p in model.parameters())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(isinstance(p.grad, ForeignTensor) for p in trained if p.grad is not None)
    assert isinstance(out[0]["sem_seg"], ForeignTensor) and out[0]["sem_seg"].shape[-2:] == (45, 61)
    # the same numbers as the plain CPU run (same weights, same seed)
    reference.train()
    torch.manual_seed(0)
    ref_losses = reference(train_batch(method))
    reference.eval()
    with torch.no_grad():
        ref_out = reference(test_inputs())
    assert sorted(ref_losses) == sorted(losses)
    for k, v in ref_losses.items():
        assert v.item() == pytest.approx(losses[k].item(), rel=1e-5, abs=1e-6), k
    assert torch.allclose(ref_out[0]["sem_seg"], out[0]["sem_seg"].elem, atol=1e-5)


def test_negative_control_a_tensor_made_without_device_fails(monkeypatch):
    """The hygiene test fails on a tensor made without ``device=`` in a real forward: SED's cost map
    with a CPU bias added (``torch.zeros(n)``), and passes once the same line says ``device=``."""
    import ovss_d2.modeling.meta_arch.sed as sed_module

    real = sed_module.cost_map

    def without_device(*args, **kwargs):
        cost = real(*args, **kwargs)
        return cost + torch.zeros(cost.shape[-1])  # the bug: made on the CPU

    def with_device(*args, **kwargs):
        cost = real(*args, **kwargs)
        return cost + torch.zeros(cost.shape[-1], device=cost.device)

    monkeypatch.setattr(sed_module, "cost_map", without_device)
    _, model = build("sed")
    with pytest.raises(DeviceHygieneError, match="same device.*CPU tensor") as err:
        run_on_foreign_device(model, "sed")
    assert "test_device.py" in str(err.value) and "without_device" in str(err.value)  # names the line
    monkeypatch.setattr(sed_module, "cost_map", with_device)
    _, model = build("sed")
    dev, _, _ = run_on_foreign_device(model, "sed")
    assert dev.violations == []


def test_negative_control_host_copies_outside_the_allow_list_fail():
    """Without its allow-list entry the text-embedding cache's copy to the host is refused; numpy()
    of device data is refused as CUDA refuses it; a 0-dim CPU tensor passes (CUDA takes it as a
    scalar), an index tensor made on the CPU does not."""
    _, model = build("err_seg")
    with pytest.raises(DeviceHygieneError, match="host copy outside the allow-list"):
        run_on_foreign_device(model, "err_seg", allow={})
    with ForeignDevice({}) as dev:
        x = torch.arange(6.0).to(dev.device)
        assert isinstance(x * torch.tensor(2.0), ForeignTensor)  # a 0-dim CPU tensor: a scalar, as on CUDA
        assert (x * 2).sum().item() == 30.0  # a scalar read synchronises but copies no tensor
        assert x[torch.tensor([0, 2], device=x.device)].elem.tolist() == [0.0, 2.0]
        assert x[[0, 2]].elem.tolist() == [0.0, 2.0]  # a Python list index is copied over, as CUDA does
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        with pytest.raises(DeviceHygieneError, match="CPU index tensor"):
            x[torch.tensor([0, 2])]
        for to_host in (x.cpu, x.tolist, lambda: torch.zeros(6).copy_(x)):
            with pytest.raises(DeviceHygieneError, match="host copy outside the allow-list"):
                to_host()
        assert len(dev.violations) == 4
    with ForeignDevice({"this test": ("tests/test_device.py", "copy_to_host")}) as dev:
        def copy_to_host(t):
            return t.cpu()

        y = copy_to_host(torch.arange(3.0, device=dev.device))
        assert type(y) is torch.Tensor and y.tolist() == [0.0, 1.0, 2.0] and dev.host_copies == {"this test": 1}


# ---- 2. device-parametrised tests ---------------------------------------------------------------
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


@pytest.fixture(autouse=True)
def _no_tf32():
    """TF32 off: the CUDA results are compared with the CPU's within fp32 tolerances."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def train_steps(cfg, model, method, steps, amp=False, amp_dtype="float16", ddp=False):
    """``steps`` steps of the project's train loop on one fixed batch, each with the same seed (the
    same random masks and views), stochastic depth and dropout off; the summed loss of each step."""
    from detectron2.utils.events import EventStorage

    no_stochastic_layers(model)
    batch = train_batch(method)
    trained = model
    if ddp:  # create_ddp_model's wrapping; it leaves a one-process world unwrapped, as launch() does
        device_ids = [torch.cuda.current_device()] if next(model.parameters()).is_cuda else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    loop = OVSSTrainLoop(trained, iter(lambda: batch, None), build_optimizer(cfg, model), amp=amp,
                         amp_dtype=amp_dtype, seed=0)
    losses = []
    with EventStorage(0) as storage:
        for i in range(steps):
            loop.iter, storage.iter = 0, i  # the loop seeds each step from its iteration
            loop.run_step()
            losses.append(storage.history("total_loss").latest())
    return loop, losses


# the training forwards that draw no random numbers once stochastic layers are off (ZeroSeg masks
# patches, ViL-Seg perturbs its views: CUDA's generator draws other numbers than the CPU's)
SAME_LOSS_ON_EVERY_DEVICE = ["clip_baseline", "sed", "err_seg"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_training_step_and_inference_on_each_device(method, device):
    """Inference and (where no random numbers are drawn) the training losses equal those of the same
    model on the CPU (fp32, TF32 off: within 1e-4); three training steps on one batch lower its loss
    and keep every tensor on the device."""
    cfg, model = build(method, device)
    if device != "cpu":
        _, cpu_model = build(method)
        no_stochastic_layers(cpu_model)
        with torch.no_grad():
            out = model.eval()([{k: on(v, device) for k, v in x.items()} for x in test_inputs()])[0]["sem_seg"]
            expected = cpu_model.eval()(test_inputs())[0]["sem_seg"]
        assert out.device.type == device and torch.allclose(out.cpu(), expected, atol=1e-4)
        if method in SAME_LOSS_ON_EVERY_DEVICE:
            no_stochastic_layers(model)
            with torch.no_grad():
                ours = model.train()([{k: on(v, device) for k, v in x.items()} for x in train_batch(method)])
                theirs = cpu_model.train()(train_batch(method))
            for k, v in theirs.items():
                assert ours[k].item() == pytest.approx(v.item(), rel=1e-4), k
    model.train()
    _, losses = train_steps(cfg, model, method, 3)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert all(p.device.type == device for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model([{k: on(v, device) for k, v in x.items()} for x in test_inputs()])[0]["sem_seg"]
    assert out.device.type == device and out.shape[-2:] == (45, 61) and torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_bf16_training_and_inference_on_each_device(method, device):
    """bf16 autocast: training losses within 2% of fp32's (docs/performance.md), inference class
    probabilities within 0.03."""
    cfg, model = build(method, device, ["TEST.AMP.ENABLED", "True", "TEST.AMP.DTYPE", "bfloat16"])
    fp32_cfg, fp32 = build(method, device)
    _, losses = train_steps(cfg, model, method, 1, amp=True, amp_dtype="bfloat16")
    _, fp32_losses = train_steps(fp32_cfg, fp32, method, 1)
    assert losses[0] == pytest.approx(fp32_losses[0], rel=0.02)
    fp32.load_state_dict(model.state_dict())
    with torch.no_grad():
        half = model.eval()(test_inputs())[0]["sem_seg"]
        full = fp32.eval()(test_inputs())[0]["sem_seg"]
    assert (half.float() - full).abs().max() < 0.03


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_amp_with_the_gradient_scaler(device):
    """ERR-Seg's configs train in fp16 with a gradient scaler: on CUDA the scaled step trains (loss
    down over five steps, the first ones possibly skipped while the scaler finds its scale; the
    first loss close to fp32's; the scale finite); on the CPU fp16 autocast is an error naming the
    fix."""
    cfg, model = build("err_seg", device)
    assert cfg.SOLVER.AMP.DTYPE == "float16"
    if device == "cpu":
        with pytest.raises(ValueError, match="SOLVER.AMP.DTYPE bfloat16"):
            train_steps(cfg, model, "err_seg", 1, amp=True, amp_dtype="float16")
        return
    loop, losses = train_steps(cfg, model, "err_seg", 5, amp=True, amp_dtype="float16")
    assert loop.grad_scaler is not None and torch.isfinite(torch.tensor(loop.grad_scaler.get_scale()))
    fp32_cfg, fp32 = build("err_seg", device)
    _, fp32_losses = train_steps(fp32_cfg, fp32, "err_seg", 1)
    assert losses[0] == pytest.approx(fp32_losses[0], rel=0.02) and losses[-1] < losses[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", DEVICES)
def test_ddp_step_in_a_one_process_group_equals_the_plain_step(device):
    """A DDP training step in a one-process group (gloo on the CPU, NCCL on
    CUDA: detectron2's launch never makes a group for one GPU) gives the plain step's weights."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    cfg, model = build("sed", device)
    _, plain = build("sed", device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        loop, losses = train_steps(cfg, model, "sed", 1, ddp=True)
        assert isinstance(loop.model, torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
    _, plain_losses = train_steps(cfg, plain, "sed", 1)
    assert losses == pytest.approx(plain_losses, rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("method, k", [("err_seg", 3), ("sed", 0)])
def test_cuda_inference_does_not_synchronise(method, k):
    """The forwards docs/performance.md calls sync-free (ERR-Seg with CRM, SED without early
    rejection) run under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any
    synchronising CUDA call (after a warm-up forward: the text embeddings are copied once per
    vocabulary)."""
    _, model = build(method, "cuda")
    setattr(model, "crm_test" if method == "err_seg" else "early_rejection_topk", k)
    model.eval()
    batch = [{k_: on(v, "cuda") for k_, v in x.items()} for x in test_inputs()]
    with torch.no_grad():
        model(batch)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
