#!/usr/bin/env bash
# Creates .venv (Python 3.11) with every pinned dependency and detectron2, then installs ovss-d2
# in editable mode. Idempotent: `make setup` calls it, and it skips what is already there.
# WEB=0 (`make quickstart`): everything but the web demo's dependencies (requirements-web.txt).
#
# detectron2, in order of preference:
#   1. one already importable by $PYTHON (e.g. a GPU user's source build with CUDA operators):
#      the venv is created with --system-site-packages so that build is used as it is;
#   2. one already importable inside .venv (installed by hand, e.g. from source; our own pb1 build
#      from before the Pillow / NumPy fixes below is rebuilt);
#   3. otherwise pb1-detectron2==0.6 (the official v0.6 Python sources) built with
#      tools/detectron2_ops_stub.c as its operator module (semantic segmentation needs no operator)
#      and upstream's later fixes for Pillow >= 10 and NumPy >= 1.24 (tools/detectron2_fixes.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
D2_SDIST_VERSION=0.6

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import detectron2" >/dev/null 2>&1; then
        echo "[setup] $PYTHON already imports detectron2: creating $VENV with system site packages"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
VPY="$VENV/bin/python"
"$VPY" -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
    || { echo "[setup] Python >= 3.10 is required (3.11 verified); set PYTHON=python3.11"; exit 1; }

echo "[setup] installing pinned dependencies (requirements.txt)"
"$VPY" -m pip install --disable-pip-version-check -q -r requirements.txt

# ok | missing | unpatched-ours (our pb1 build from before the fixes below: rebuilt) | unpatched-other
d2_state=$("$VPY" tools/detectron2_fixes.py state 2>/dev/null || echo missing)
if [ "$d2_state" != unpatched-ours ] \
    && "$VPY" -c "import PIL.Image as I; I.LINEAR = I.BILINEAR; import detectron2.engine" >/dev/null 2>&1; then
    echo "[setup] detectron2 already importable ($d2_state): $("$VPY" -c 'import PIL.Image as I; I.LINEAR = I.BILINEAR; import detectron2; print(detectron2.__file__)' 2>/dev/null)"
else
    if [ "$d2_state" = unpatched-ours ]; then
        echo "[setup] rebuilding detectron2: the installed build predates the Pillow >= 10 / NumPy >= 1.24 fixes"
    fi
    echo "[setup] building pb1-detectron2==$D2_SDIST_VERSION (detectron2 v0.6 sources, no operators)"
    work=build/detectron2-src
    rm -rf "$work" && mkdir -p "$work"
    # The sdist's metadata step imports torch, hence --no-build-isolation (torch is installed above).
    "$VPY" -m pip download --disable-pip-version-check -q --no-deps --no-build-isolation \
        --no-binary pb1-detectron2 -d "$work" "pb1-detectron2==$D2_SDIST_VERSION"
    tar -xzf "$work/pb1-detectron2-$D2_SDIST_VERSION.tar.gz" -C "$work"
    src="$work/pb1-detectron2-$D2_SDIST_VERSION"
    mkdir -p "$src/detectron2/layers/csrc"
    cp tools/detectron2_ops_stub.c "$src/detectron2/layers/csrc/vision.cpp"
    # upstream's later fixes for Pillow >= 10 (Image.LINEAR) and NumPy >= 1.24 (np.int, ...)
    "$VPY" tools/detectron2_fixes.py apply "$src"
    # --no-deps: its pins (black==21.4b2, future, pydot) are unused here; what it imports is pinned
    # in requirements.txt.
    "$VPY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation --force-reinstall "$src"
fi

# --- colour augmentation (issue 15): INPUT.COLOR_AUG_SSD uses detectron2.projects.point_rend -------
# detectron2's setup.py installs projects/PointRend as detectron2.projects.point_rend (the pb1 sdist
# and upstream source builds alike); a detectron2 installed some other way may lack it.
if ! "$VPY" -c "import PIL.Image as I; I.LINEAR = I.BILINEAR; import detectron2.projects.point_rend" >/dev/null 2>&1; then
    echo "[setup] warning: detectron2.projects.point_rend is not importable: INPUT.COLOR_AUG_SSD True (SED," \
         "ERR-Seg configs) will fail; install detectron2 from source (pip install 'git+https://github.com/facebookresearch/detectron2.git')"
fi
# --- end colour augmentation ------------------------------------------------------------------------

# The web demo (the `web` extra): gradio without its pillow<13 cap (see requirements-web.txt).
# WEB=0 (`make quickstart`) leaves it out.
if [ "${WEB:-1}" != 0 ]; then
    echo "[setup] installing the web demo's dependencies (requirements-web.txt)"
    "$VPY" -m pip install --disable-pip-version-check -q -c requirements.txt -r <(grep -v '^gradio==' requirements-web.txt)
    "$VPY" -m pip install --disable-pip-version-check -q --no-deps "$(grep '^gradio==' requirements-web.txt)"
fi

echo "[setup] installing ovss-d2 (editable)"
"$VPY" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
"$VPY" -c "import ovss_d2; print('[setup] ok: ovss_d2', ovss_d2.__version__, 'with detectron2', ovss_d2.compat.DETECTRON2_VERSION)"
touch "$VENV/.core-done"
if [ "${WEB:-1}" != 0 ]; then touch "$VENV/.setup-done"; fi
