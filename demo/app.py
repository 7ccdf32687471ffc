#!/usr/bin/env python
"""A local web page for open-vocabulary segmentation: upload an image, type any class names, see
the segmentation, download the label map.

    python demo/app.py --config-file configs/toy/sed_toy.yaml [--weights W] [--port 7860] [--opts KEY VALUE ...]

Open http://127.0.0.1:7860. Without ``--weights`` the page loads the config's MODEL.WEIGHTS, else
the quickstart's model (output/quickstart/method/model_final.pth, written by ``make quickstart``)
when it fits the config; with neither it still starts and says on the page how to get a model.
Inference is ``ovss_d2.predictor.Predictor`` (the Python API and demo/demo.py use the same);
requests run one at a time and text embeddings are cached across them. Each request's overlay and
label map are files the page serves from its own folder: the last ``--keep-results`` requests'
(default 16) are kept, older ones deleted (least recently used first); uploads leave Gradio's cache
after an hour; everything goes when the app ends. Needs the ``web`` extra
(``pip install -e .[web]``; ``make setup`` installs it). ``tools/web_demo_screenshot.py`` takes
the screenshot of this page in demo/README.md.
"""
import argparse
import errno
import html
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page reports nothing anywhere

import ovss_d2  # noqa: E402,F401  (compat shims before detectron2)
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ovss_d2.data.io import check_label_classes, save_label  # noqa: E402
from ovss_d2.predictor import check_sizes  # noqa: E402
from ovss_d2.utils.cli import add_model_arguments, parse_args_anywhere  # noqa: E402
from ovss_d2.utils.vocabulary import parse_vocabulary_text  # noqa: E402

logger = logging.getLogger("ovss_d2.web")

QUICKSTART_WEIGHTS = os.path.join(REPO, "output", "quickstart", "method", "model_final.pth")
GET_A_MODEL = (f"Train one with `make quickstart` (about 10 minutes on 2 CPU cores; it writes "
               f"`{os.path.relpath(QUICKSTART_WEIGHTS, REPO)}`, which this page loads by default), "
               "or restart with `--weights path/to/model_final.pth`.")
NUM_EXAMPLES = 4
DISPLAY_SIZE = 384  # images smaller than this are shown magnified by an integer factor
KEEP_RESULTS = 16  # requests whose overlay and label map stay on disk (ours: a few browser tabs' worth)


class InputError(ValueError):
    """A request the page answers with a message (bad upload, vocabulary, size), not a trace."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, weights_help="model checkpoint (default: MODEL.WEIGHTS, else the quickstart's)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-megapixels", type=float, default=25.0, help="larger uploads are refused")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="larger files are refused")
    p.add_argument("--keep-results", type=int, default=KEEP_RESULTS,
                   help="requests whose overlay and label map files are kept (older ones are deleted)")
    return p


def check_app_arguments(args) -> None:
    """A ``ValueError`` naming the flag for values the page cannot work with (before the model is built)."""
    check_sizes(args.max_size, max_size_name="--max-size")
    for flag, value in (("--max-megapixels", args.max_megapixels), ("--max-upload-mb", args.max_upload_mb),
                        ("--keep-results", args.keep_results)):
        if not value > 0:
            raise ValueError(f"{flag} must be positive; got {value}.")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535; got {args.port}.")


def check_port_free(host: str, port: int) -> None:
    """An ``OSError`` saying what to do when ``port`` on ``host`` cannot be served on (in use, or
    not an address of this machine), found before the model is built."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as e:
        reason = e.strerror or str(e)
        fix = ("stop the program using it, or pass another --port" if e.errno == errno.EADDRINUSE
               else "pass another --port or --host")
        raise OSError(e.errno, f"cannot serve on {host}:{port} ({reason}): {fix}.") from None


# ---- model -----------------------------------------------------------------------------------------
def load_predictor(cfg, weights: str = "", quickstart: str = QUICKSTART_WEIGHTS, **predictor_kwargs):
    """(Predictor, weights loaded, note for the page). Explicit ``weights`` (or MODEL.WEIGHTS) must
    load; otherwise the quickstart's model is tried, and without a fitting one the page still
    starts, with the config's CLIP weights (random ones when those are missing too) and a note."""
    from ovss_d2.predictor import Predictor

    weights = weights or cfg.MODEL.WEIGHTS
    if weights:
        return Predictor(cfg, weights, **predictor_kwargs), weights, ""
    problems = []
    if os.path.isfile(quickstart):
        try:
            return Predictor(cfg, quickstart, **predictor_kwargs), quickstart, ""
        except (RuntimeError, ValueError, KeyError) as e:  # a checkpoint of another method or model
            problems.append(f"the quickstart model `{quickstart}` does not fit this config ({_first_line(e)}).")
    try:
        predictor = Predictor(cfg, "", **predictor_kwargs)
        clip = f"the CLIP weights of `MODEL.CLIP.PRETRAINED {cfg.MODEL.CLIP.PRETRAINED}`"
    except FileNotFoundError as e:  # e.g. MODEL.CLIP.PRETRAINED toyworld before the tiny CLIP is trained
        problems.append(_first_line(e))
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.CLIP.PRETRAINED = "none"
        predictor = Predictor(cfg, "", **predictor_kwargs)
        clip = "random CLIP weights"
    if any(p.requires_grad for p in predictor.model.parameters()):
        headline = (f"**No trained model**: this {cfg.MODEL.META_ARCHITECTURE} runs with {clip} and an untrained "
                    "rest, so its segmentation is meaningless.")
    elif clip.startswith("random"):
        headline = "**No CLIP weights**: the model runs with random weights."
    else:  # a training-free method with its CLIP weights: complete as it is
        return predictor, "", ""
    return predictor, "", " ".join([headline, GET_A_MODEL] + [f"(Details: {' '.join(problems)})"] * bool(problems))


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def default_vocabulary(cfg) -> List[str]:
    """The class names of the config's first test dataset (toy configs: ``toyworld_val``)."""
    from detectron2.data import MetadataCatalog

    for name in cfg.DATASETS.TEST:
        names = getattr(MetadataCatalog.get(name), "stuff_classes", None)
        if names:
            return list(names)
    return []


def toyworld_examples(folder: str, n: int = NUM_EXAMPLES) -> List[str]:
    """The first ``n`` ToyWorld val scenes, rendered by the current ToyWorld generator, as PNGs."""
    from ovss_d2.toyworld import render_scene

    paths = []
    for i in range(n):
        path = os.path.join(folder, f"toyworld_val_{i:06d}.png")
        Image.fromarray(render_scene("val", i)["image"]).save(path)
        paths.append(path)
    return paths


# ---- one request -----------------------------------------------------------------------------------
def vocabulary_from_text(text: str) -> Tuple[List[str], List[str]]:
    """(class names, warnings) from the class box, by the package's rules and checks
    (:func:`ovss_d2.utils.parse_vocabulary_text`): one line of comma-separated names or
    ``dataset:NAME``, or several lines of one class each (a line may hold synonyms, ``person,
    people``). Never reads a file of the server."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            names = parse_vocabulary_text(text or "")
            check_label_classes(len(names))
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(e.args[0] if e.args else str(e)) from None
    return names, [str(w.message) for w in caught]


def read_upload(path: Optional[str], max_pixels: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an uploaded file, or an :class:`InputError` saying what is wrong."""
    from ovss_d2.data.io import UnreadableImageError, read_image_rgb

    if not path:
        raise InputError("No image: upload one (or pick an example), then press Segment.")
    name = os.path.basename(path)
    try:
        w, h = image_size(path)
    except Exception:  # noqa: BLE001 - not an image: read_image_rgb below says so
        w = h = 0
    if w * h > max_pixels:
        raise InputError(f"`{name}` is too large ({w}x{h}, {w * h / 1e6:.1f} megapixels; this page takes up to "
                         f"{max_pixels / 1e6:g}): resize it, or restart the app with a larger --max-megapixels.")
    try:
        return read_image_rgb(path)
    except UnreadableImageError as e:
        # the decoder's words, without the server's temporary path
        reason = re.sub(r"\s*<_io\.\w+ name=[^>]*>", "", str(e).split(": ", 1)[-1].replace(path, name))
        raise InputError(f"`{name}` cannot be read as an image ({reason}): upload a PNG, JPEG, BMP, TIFF or "
                         "WebP file.") from None


_PIL_LIMIT = threading.Lock()


def image_size(path: str) -> Tuple[int, int]:
    """(width, height) from the file's header, nothing decoded. Pillow's own decompression-bomb
    check is off for this call (the page compares the size with --max-megapixels itself), so an
    image too large for Pillow still reports its real size."""
    with _PIL_LIMIT:  # MAX_IMAGE_PIXELS is Pillow's module global
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _magnify(array: np.ndarray, k: int) -> np.ndarray:
    return np.repeat(np.repeat(array, k, axis=0), k, axis=1)


def legend_html(fractions: Dict[str, float], class_names: Sequence[str], palette: np.ndarray) -> str:
    """The classes present (largest first) with their overlay colours."""
    items = []
    for name, frac in fractions.items():
        r, g, b = (int(c) for c in palette[list(class_names).index(name)])
        items.append(f'<span class="legend-item"><span class="legend-swatch" style="background:rgb({r},{g},{b})">'
                     f'</span><span class="legend-name">{html.escape(name)}</span> '
                     f'<span class="legend-share">{frac:.1%}</span></span>')
    return f'<div class="legend">{"".join(items)}</div>'


def shares_html(rows: Sequence[Tuple[str, int, float]]) -> str:
    """Class, pixels and share (%) of each class present."""
    body = "".join(f"<tr><td>{html.escape(n)}</td><td>{c}</td><td>{s:.2f}</td></tr>" for n, c, s in rows)
    head = ("<caption>Pixel share per class</caption>"
            "<thead><tr><th>class</th><th>pixels</th><th>share (%)</th></tr></thead>")
    return f'<div class="shares"><table>{head}<tbody>{body}</tbody></table></div>'


@dataclass
class Answer:
    """What the page shows for one request (only ``status`` when the request was refused)."""
    status: str
    overlay: Optional[np.ndarray] = None
    rows: List[Tuple[str, int, float]] = field(default_factory=list)  # (class, pixels, share %), largest first
    legend: str = ""
    label_path: Optional[str] = None
    overlay_path: Optional[str] = None  # the overlay as the PNG the page shows

    def outputs(self) -> tuple:
        shown = self.overlay_path or self.overlay
        return shown, self.legend, shares_html(self.rows) if self.rows else "", self.label_path, self.status


class WebDemo:
    """The page's state: one Predictor (its model caches text embeddings across requests). Each
    answered request's overlay and label map are written to a folder ``result_<n>`` of ``workdir``;
    only the last ``keep_results`` folders are kept, the oldest are deleted."""

    def __init__(self, predictor, *, title: str, max_pixels: float, workdir: str, default_classes: Sequence[str] = (),
                 examples: Sequence[str] = (), note: str = "", keep_results: int = KEEP_RESULTS):
        self.predictor, self.title, self.max_pixels, self.workdir = predictor, title, max_pixels, workdir
        self.default_classes, self.examples, self.note = list(default_classes), list(examples), note
        self.keep_results, self._results = keep_results, 0

    def _result_folder(self) -> str:
        """A new folder for one request's files, after deleting the oldest beyond ``keep_results - 1``."""
        old = sorted(d for d in os.listdir(self.workdir) if re.fullmatch(r"result_\d+", d))
        for name in old[:max(0, len(old) - self.keep_results + 1)]:
            shutil.rmtree(os.path.join(self.workdir, name), ignore_errors=True)
        self._results += 1
        folder = os.path.join(self.workdir, f"result_{self._results:09d}")
        os.makedirs(folder)
        return folder

    def segment(self, path: Optional[str], text: str, progress=None) -> Answer:
        """An uploaded file and the class box's text -> what the page shows."""
        from ovss_d2.utils import class_palette, draw_overlay

        if progress is None:  # (not `or`: a gr.Progress without iterables is falsy)
            progress = lambda *a, **k: None  # noqa: E731
        start = time.perf_counter()
        try:
            progress(0.0, desc="Reading the image")
            image = read_upload(path, self.max_pixels)
            names, notes = vocabulary_from_text(text)
            if names != self.predictor.class_names:
                progress(0.2, desc=f"Embedding {len(names)} class names (once per vocabulary)")
                self.predictor.set_vocabulary(names)
            progress(0.4, desc=f"Segmenting {image.shape[1]}x{image.shape[0]} on {self.predictor.device.type}")
            pred = self.predictor.predict(image, names)
        except InputError as e:
            return Answer(f"**Error:** {e}")
        except Exception as e:  # noqa: BLE001 - the page shows one line; the server log has the trace
            logger.error("request failed:\n%s", traceback.format_exc())
            return Answer(f"**Error:** internal error ({type(e).__name__}: {_first_line(e)}); the server log has "
                          "the details.")
        progress(0.9, desc="Drawing")
        palette = class_palette(len(names))
        k = max(1, DISPLAY_SIZE // max(image.shape[:2]))  # small images: magnified for the eye, ids kept
        shown, shown_label = (image, pred.label) if k == 1 else (_magnify(image, k), _magnify(pred.label, k))
        fractions = pred.fractions()
        counts = np.bincount(pred.label.reshape(-1), minlength=len(names))
        folder = self._result_folder()
        stem = os.path.join(folder, os.path.splitext(os.path.basename(path))[0])
        label_path, overlay_path = stem + "_label.png", stem + "_overlay.png"
        save_label(pred.label, len(names), label_path)
        overlay = draw_overlay(shown, shown_label, names, palette=palette)
        Image.fromarray(overlay).save(overlay_path)
        status = (f"**Done:** {len(fractions)} of {len(names)} classes found in the {image.shape[1]}x{image.shape[0]} "
                  f"image ({time.perf_counter() - start:.2f} s).")
        return Answer(status + "".join(f"\n\n**Warning:** {n}" for n in notes), overlay=overlay,
                      rows=[(n, int(counts[names.index(n)]), 100 * f) for n, f in fractions.items()],
                      legend=legend_html(fractions, names, palette), label_path=label_path, overlay_path=overlay_path)

    def preview(self, path: Optional[str]):
        """The uploaded image as read, or a message."""
        if not path:
            return None, ""
        try:
            return read_upload(path, self.max_pixels), ""
        except InputError as e:
            return None, f"**Error:** {e}"


CSS = """
.legend {display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 6px 2px;}
.legend-item {display: inline-flex; align-items: center; gap: 6px;}
.legend-swatch {display: inline-block; width: 14px; height: 14px; border-radius: 3px; border: 1px solid #0003;}
.legend-share {color: #666;}
.shares {max-height: 320px; overflow-y: auto;}
.shares table {width: 100%; border-collapse: collapse;}
.shares caption {text-align: left; padding: 4px 0; color: var(--block-label-text-color, #666);}
.shares th {position: sticky; top: 0; background: var(--block-background-fill, #fff); text-align: left;}
.shares th, .shares td {padding: 3px 8px; border-bottom: 1px solid #8883;}
.shares td:nth-child(n+2), .shares th:nth-child(n+2) {text-align: right;}
"""


def build_blocks(app: WebDemo):
    """The page."""
    import gradio as gr

    def segment(path, text, progress=gr.Progress()):  # Gradio fills in `progress` (a bar on the outputs)
        return app.segment(path, text, progress).outputs()

    # delete_cache: uploads and results older than an hour leave Gradio's cache
    with gr.Blocks(title="ovss-d2 web demo", analytics_enabled=False, delete_cache=(1800, 3600)) as blocks:
        gr.Markdown(f"## ovss-d2: open-vocabulary segmentation\n{app.title}", elem_id="model")
        if app.note:
            gr.Markdown(app.note, elem_id="note")
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Image (PNG, JPEG, ...)", file_types=["image"], type="filepath", height=120,
                                 elem_id="upload")
                preview = gr.Image(label="Uploaded image", interactive=False, height=200, elem_id="preview")
                classes = gr.Textbox(
                    label="Class names", value=", ".join(app.default_classes), lines=3, max_lines=8,
                    elem_id="classes", info="Comma-separated (grass, sky, red circle), or one class per line with "
                                            "synonyms (person, people), or dataset:NAME.")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                if app.examples:
                    gallery = gr.Gallery(app.examples, label="Examples: ToyWorld val scenes (click one)", columns=4,
                                         height=130, allow_preview=False, object_fit="contain", format="png",
                                         buttons=[], elem_id="examples")

                    def pick(evt: gr.SelectData):  # Gradio passes the clicked example
                        return app.examples[evt.index]

                    gallery.select(pick, outputs=upload)
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                outputs = [
                    gr.Image(label="Overlay", interactive=False, format="png", elem_id="overlay"),
                    gr.HTML(elem_id="legend"),
                    gr.HTML(elem_id="shares"),
                    gr.File(label="Label map (PNG of class ids, the image's size)", height=80, elem_id="label-map"),
                    status,
                ]
        upload.change(app.preview, inputs=upload, outputs=[preview, status])
        run.click(segment, inputs=[upload, classes], outputs=outputs)
    return blocks


def model_title(cfg, config_file: str, weights: str) -> str:
    inside = weights and os.path.abspath(weights).startswith(REPO + os.sep)
    shown = os.path.relpath(weights, REPO) if inside else weights
    return (f"**Method** {cfg.MODEL.META_ARCHITECTURE} · **config** `{config_file}` · **weights** "
            f"`{shown or 'none (see below)'}` · **CLIP** {cfg.MODEL.CLIP.NAME} · **device** {cfg.MODEL.DEVICE}")


def create_app(args, workdir: str, results_dir: Optional[str] = None) -> WebDemo:
    """The page's state: examples written to ``workdir``, request results to ``results_dir``
    (default ``workdir``)."""
    from ovss_d2.engine import load_config

    cfg = load_config(args.config_file, args.opts)
    predictor, weights, note = load_predictor(cfg, args.weights, device=args.device, max_size=args.max_size)
    examples = toyworld_examples(workdir)
    return WebDemo(predictor, title=model_title(predictor.cfg, args.config_file, weights),
                   max_pixels=args.max_megapixels * 1e6, workdir=results_dir or workdir,
                   default_classes=default_vocabulary(cfg), examples=examples, note=note,
                   keep_results=args.keep_results)


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args_anywhere(parser, argv)  # flags may follow --opts
    if not args.config_file:
        parser.error("the following arguments are required: --config-file")
    try:
        check_app_arguments(args)
        check_port_free(args.host, args.port)
    except (OSError, ValueError) as e:
        print(f"demo/app.py: {e.strerror if isinstance(e, OSError) and e.strerror else e}", file=sys.stderr)
        return 2
    try:
        import gradio
    except ImportError:
        gradio = None
    if gradio is None or int(gradio.__version__.split(".")[0]) < 6:
        print("demo/app.py needs Gradio 6: pip install -e .[web] (make setup installs it).", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ovss_web_") as workdir:
        # Gradio's uploads and copies live in the app's folder (removed at exit) unless the user
        # chose GRADIO_TEMP_DIR; results are written inside Gradio's folder, so they are served as
        # they are (Gradio copies a file from elsewhere, one more file per request).
        ours = "GRADIO_TEMP_DIR" not in os.environ
        if ours:
            os.environ["GRADIO_TEMP_DIR"] = os.path.join(workdir, "gradio")
        os.makedirs(os.environ["GRADIO_TEMP_DIR"], exist_ok=True)
        results = tempfile.mkdtemp(prefix="ovss_results_", dir=os.environ["GRADIO_TEMP_DIR"])
        try:
            return _serve(args, workdir, results)
        finally:
            shutil.rmtree(results, ignore_errors=True)
            if ours:
                del os.environ["GRADIO_TEMP_DIR"]


def _serve(args, workdir: str, results: str) -> int:
    """Build the page and serve it until Ctrl-C / SIGTERM; 2 when the model cannot be built."""
    try:
        app = create_app(args, workdir, results)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # config, weights, device
        print(f"demo/app.py: {_first_line(e)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    # SIGTERM ends the server as Ctrl-C does, so the temporary folder is removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    blocks = build_blocks(app)
    blocks.queue(default_concurrency_limit=1)  # one Predictor: requests take turns
    try:
        blocks.launch(server_name=args.host, server_port=args.port, max_file_size=int(args.max_upload_mb * 2**20),
                      allowed_paths=[workdir], css=CSS, footer_links=[], quiet=False)
    except OSError as e:  # the port was taken after the check above
        print(f"demo/app.py: cannot serve on {args.host}:{args.port} ({_first_line(e)}): stop the program using "
              "it, or pass another --port.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
