"""The documented examples run as written.

Every command of GETTING_STARTED.md's "Train and evaluate" and "Demo and Python API" sections that
can run on an offline machine is executed literally (bash, in a scratch folder where configs/, demo/ and
train_net.py are linked), after the test has put there what the command names: a checkpoint of the
named config's model (random weights stand in for a trained one), the named input files, and a
small ToyWorld (a few images per split) for commands that use it. A ``# done: ...`` line under a
demo command must match the run's summary. Commands with placeholders (``<config.yaml>``) or that
need downloaded CLIP weights or a benchmark dataset are skipped. Nothing here depends on the
commands' class names, images or paths: edit the page and this test follows it.
"""
import os
import re
import shlex
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import REPO

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
TOYWORLD_IMAGES = 12  # per split of the scratch ToyWorld (more than a documented --limit)
GUIDE = "GETTING_STARTED.md"  # the page whose commands run here
DONE = re.compile(r"done: (\d+) images, (\d+) videos \((\d+) frames\); skipped: (\d+)")


def guide_section(title: str) -> str:
    text = open(os.path.join(REPO, GUIDE), encoding="utf-8").read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def code_blocks(section: str, language: str):
    return re.findall(rf"^```{language}\n(.*?)^```", section, re.S | re.M)


def shell_commands(block: str):
    """(command, the ``# done: ...`` comment right after it or None), continuation lines joined."""
    out, current = [], ""
    for line in block.splitlines():
        if current:
            current += " " + line.strip()
        elif line.strip().startswith("#"):
            if out and DONE.search(line) and out[-1][1] is None:
                out[-1] = (out[-1][0], line)
            continue
        else:
            current = line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
        elif current:
            out.append((current, None))
            current = ""
    return out


def runnable(command: str) -> bool:
    if "<" in command or not command.startswith("python "):
        return False
    if "demo/demo.py" in command:
        return True
    return "train_net.py" in command and "--eval-only" in command and "MODEL.WEIGHTS" in command


def option(tokens, name):
    return tokens[tokens.index(name) + 1] if name in tokens else None


def option_list(tokens, name):
    if name not in tokens:
        return []
    values = []
    for t in tokens[tokens.index(name) + 1:]:
        if t.startswith("--"):
            break
        values.append(t)
    return values


def _image(path, seed):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _video(path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for i in range(3):
        writer.write(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()


def make_inputs(specs, cwd):
    """Create what each --input spec names (a folder gets two images, a glob one match)."""
    for i, spec in enumerate(specs):
        if spec.startswith("dataset:"):
            continue
        path = os.path.join(cwd, spec.replace("**/", "").replace("*", "sample"))
        if spec.endswith("/"):
            _image(os.path.join(path, "a.jpg"), i)
            _image(os.path.join(path, "b.png"), i + 100)
        elif path.lower().endswith(VIDEO_EXTS):
            _video(path)
        else:
            _image(path, i)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder like the repository root for the commands, with its own cache (a small ToyWorld,
    generated on demand)."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("configs", "demo", "train_net.py"):
        os.symlink(os.path.join(REPO, name), root / name)
    env = dict(os.environ, OVSS_D2_CACHE=str(root / "cache"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return root, env


def prepare(config, weights, datasets, cwd, env):
    """A checkpoint of ``config``'s model at ``weights`` and the ToyWorld data ``datasets`` use."""
    import torch

    from ovss_d2.checkpoint import OVSSCheckpointer
    from ovss_d2.engine import OVSSTrainer, load_config

    if any(d.startswith("toyworld") for d in datasets):
        from ovss_d2.toyworld import generator

        root = os.path.join(env["OVSS_D2_CACHE"], os.path.relpath(generator.default_root(),
                                                                   os.environ["OVSS_D2_CACHE"]))
        if not generator.is_generated(root):  # a small ToyWorld: every split, a few images each
            generator.generate(root, sizes={split: TOYWORLD_IMAGES for split in generator.SPLITS}, progress=False)
    path = os.path.join(cwd, weights)
    if not os.path.isfile(path):
        torch.manual_seed(0)
        cfg = load_config(os.path.join(cwd, config), ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()",
                                                      "DATASETS.TEST", "()"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        OVSSCheckpointer(OVSSTrainer.build_model(cfg), save_dir=os.path.dirname(path)).save(
            os.path.splitext(os.path.basename(path))[0])


def run(command, cwd, env):
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def section_commands(title):
    found = [c for block in code_blocks(guide_section(title), "bash") for c in shell_commands(block)]
    return [c for c in found if runnable(c[0])]


def test_demo_commands_run_as_written(scratch):
    cwd, env = scratch
    commands = section_commands("Demo and Python API")
    assert commands, "the Demo section has no demo command"
    for command, done in commands:
        tokens = shlex.split(command)
        datasets = [s[len("dataset:"):] for s in option_list(tokens, "--input") + option_list(tokens, "--vocabulary")
                    if s.startswith("dataset:")]
        prepare(option(tokens, "--config-file"), option(tokens, "--weights"), datasets, cwd, env)
        make_inputs(option_list(tokens, "--input"), cwd)
        before = overlays(cwd / option(tokens, "--output"))
        proc = run(command, cwd, env)
        got = DONE.search(proc.stdout)
        assert got, proc.stdout
        if done:
            assert DONE.search(done).groups() == got.groups(), (done, got.group(0))
        images, videos = int(got.group(1)), int(got.group(2))
        written = overlays(cwd / option(tokens, "--output")) - before
        assert images + videos > 0 and len(written) == images + videos


def overlays(folder):
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if "_overlay." in f}


def test_eval_commands_run_as_written(scratch):
    cwd, env = scratch
    commands = section_commands("Train and evaluate")
    assert commands, "the Train and evaluate section has no runnable --eval-only command"
    from ovss_d2.engine import load_config

    for command, _ in commands:
        tokens = shlex.split(command)
        config = option(tokens, "--config-file")
        datasets = list(load_config(os.path.join(cwd, config)).DATASETS.TEST)
        prepare(config, option(tokens, "MODEL.WEIGHTS"), datasets, cwd, env)
        proc = run(command, cwd, env)
        assert "mIoU" in proc.stdout + proc.stderr


def test_python_example_runs_as_written(scratch):
    cwd, env = scratch
    blocks = code_blocks(guide_section("Demo and Python API"), "python")
    assert blocks, "the Demo section has no Python example"
    for i, code in enumerate(blocks):
        literals = re.findall(r"\"([^\"]+)\"", code)
        config = next(s for s in literals if s.endswith(".yaml"))
        weights = next(s for s in literals if s.endswith(".pth"))
        prepare(config, weights, [], cwd, env)
        for j, name in enumerate(s for s in literals if s.lower().endswith(IMAGE_EXTS)):
            _image(str(cwd / name), j)
        script = cwd / f"readme_example_{i}.py"
        script.write_text(code)
        run(f"python {script.name}", cwd, env)
