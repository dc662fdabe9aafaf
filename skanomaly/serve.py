"""A local inspection app: score images in a browser, tune thresholds live.

``skanomaly serve MODEL [IMAGES_OR_DIR ...]`` (or :func:`make_server` from
Python) starts a small web server on ``127.0.0.1`` around a fitted pipeline.
The page lets a person drop images or see the folders given on the command
line scored, and shows per image the score, p-value, label, heatmap overlay,
predicted mask and boxes, in a table sortable by any column. An image-level
and a pixel-level threshold, each as a false-alarm rate (from the
calibration images the model held out) or as a raw value, relabel the
images and redraw masks, boxes and counts in the page itself: the model is
never called again for a threshold change. The table downloads as CSV.
With a file to save to (``skanomaly serve --save-to``), the page's Save
button writes the model with the thresholds the sliders show
(:func:`skanomaly.calibration.set_thresholds`).

The server is Python's standard ``http.server`` (threaded): no dependency
beyond skanomaly's own, it starts as soon as the model has loaded, and tests
run it in-process on a free port. It reads no file from disk on request:
the page is one embedded HTML document and every image it shows travels
inside a result (a PNG data URL), so nothing outside the chosen images is
ever served. The model scores one image at a time under a lock, so uploads
and the folder scan share it safely.
"""

import base64
import copy
import inspect
import io
import json
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

__all__ = ["InspectionServer", "make_server"]

# Longest side of the anomaly map sent to the page: masks and boxes are drawn
# from it there (64 KiB of float32 at most per image).
MAP_SIDE = 128
# Longest side of the overlay image shown in the page.
DISPLAY_SIDE = 384
# Largest upload accepted, in bytes.
MAX_UPLOAD = 64 * 2**20
# False-alarm rates offered by the pixel threshold control.
PIXEL_RATES = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)


def _fit_within(shape, side):
    """``(h, w)`` scaled so that the longer side is at most ``side``."""
    h, w = shape
    scale = min(1.0, side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _decode_upload(data, name):
    """An uploaded file's bytes as a decoded PIL image, or a ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ValueError(f"{name}: the file is empty.")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not a readable image (unknown file format).") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt
        raise ValueError(f"{name}: not a readable image ({exc}).") from None
    return image


class InspectionServer(ThreadingHTTPServer):
    """The web server behind ``skanomaly serve``, around one fitted pipeline.

    Use :func:`make_server` to build one. Requests:

    - ``GET /``: the page.
    - ``GET /api/model``: the model's thresholds (``offset``, the pixel
      threshold at each of :data:`PIXEL_RATES`, ``contamination``).
    - ``GET /api/results?since=N``: the results from the N-th on (each is
      sent once to a polling page), the total, and how many images remain
      to be scored from the folders.
    - ``POST /api/images`` with an image file as the body (its name in the
      ``X-Filename`` header, URL-encoded): scores it and returns its result,
      or status 400 with ``{"error": ...}`` when it is not an image.
    - ``POST /api/thresholds`` with a JSON object of
      :func:`~skanomaly.calibration.set_thresholds`'s keyword arguments:
      sets them and writes the model to ``save_to``; returns the model's
      new thresholds and ``saved`` (the path). Status 403 when no
      ``save_to`` was given, 400 for a bad value.

    Both POSTs are refused (403) when a browser sends them from a page of
    another origin: a site visited in the same browser cannot score images
    or overwrite the model.

    Parameters
    ----------
    pipeline : fitted Pipeline
        A skanomaly pipeline (``score_samples``, calibration scores).
    address : (str, int)
        Host and port; port 0 picks a free one.
    paths : sequence of str, default=()
        Image files scored in a background thread once serving starts.
    save_to : str or path-like or None, default=None
        Where the Save button writes the model; None disables it.

    Attributes
    ----------
    url : str
        Where the page is served.
    results : list of dict
        One entry per image scored, in order (``error`` set where it failed).
    n_model_calls : int
        Times the model has scored an image (threshold changes add none).
    """

    daemon_threads = True

    def __init__(self, pipeline, address, paths=(), save_to=None):
        self.save_to = None if save_to is None else Path(save_to)
        self._model_info = _model_info(pipeline, self.save_to)  # refuses an unfitted pipeline first
        super().__init__(address, _Handler)
        self.pipeline = pipeline
        self.results = []
        self.n_model_calls = 0
        self._paths = list(paths)
        self.pending = len(self._paths)
        self._model_lock = threading.Lock()
        self._results_lock = threading.Lock()
        self._thread = self._scan = None

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def score_image(self, image, name, source):
        """Score one image and record its result.

        Parameters
        ----------
        image : path, PIL image, array or bytes
            The image; bytes are an uploaded file, decoded here.
        name : str
            Shown in the page and the CSV.
        source : {"folder", "upload"}

        Returns
        -------
        result : dict
            ``id``, ``name``, ``source``, ``score``, ``p_value``, ``overlay``
            (PNG data URL) and, for methods with maps, ``map`` (float32,
            base64, at most :data:`MAP_SIDE` pixels on a side); or ``id``,
            ``name``, ``source`` and ``error`` when the image cannot be read.
        """
        try:
            if isinstance(image, bytes):
                image = _decode_upload(image, name)
            result = self._score(image, name)
        except (ValueError, OSError) as exc:
            result = {"name": name, "error": str(exc)}
        result["source"] = source
        with self._results_lock:
            result["id"] = len(self.results)
            self.results.append(result)
        return result

    def _score(self, image, name):
        from PIL import Image

        from .calibration import _pvalues_of_scores
        from .images import load_image
        from .maps import anomaly_maps
        from .plotting import _png_data_url, overlay_heatmap

        rgb = load_image(image)  # an unreadable file raises a ValueError naming its path
        with self._model_lock:
            self.n_model_calls += 1
            if self._model_info["has_maps"]:
                maps, scores = anomaly_maps(self.pipeline, [rgb], return_scores=True)
                amap = maps[0]
            else:
                amap, scores = None, self.pipeline.score_samples([rgb])
        score = float(scores[0])
        head = self.pipeline.steps[-1][1]
        result = {
            "name": name,
            "score": score,
            "p_value": float(_pvalues_of_scores(head, np.array([score]))[0]),
            "width": int(rgb.shape[1]),
            "height": int(rgb.shape[0]),
        }
        if amap is None:
            shown = (rgb * 255).round().astype(np.uint8)
        else:
            shown = overlay_heatmap(rgb, amap, vmin=0.0, vmax=2.0 * self._model_info["pixel_threshold"])
            h, w = _fit_within(amap.shape, MAP_SIDE)
            small = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32)).resize((w, h), Image.BILINEAR)
            result["map"] = {
                "width": w, "height": h,
                "data": base64.b64encode(np.asarray(small, dtype="<f4").tobytes()).decode("ascii"),
            }
        h, w = _fit_within(shown.shape[:2], DISPLAY_SIDE)
        result["overlay"] = _png_data_url(np.asarray(Image.fromarray(shown).resize((w, h), Image.BILINEAR)))
        return result

    def save_thresholds(self, choice):
        """Set the thresholds of ``choice`` (:func:`~skanomaly.calibration.set_thresholds`'s
        keyword arguments) and write the model to ``save_to``.

        Returns
        -------
        info : dict
            What ``/api/model`` now answers, and ``saved``: the path.
        """
        from .calibration import set_thresholds
        from .persistence import save_model

        if self.save_to is None:
            raise PermissionError("this app was started without a file to save the model to "
                                  "(skanomaly serve --save-to FILE).")
        # set_thresholds's keyword arguments, as its signature names them.
        allowed = set(inspect.signature(set_thresholds).parameters) - {"estimator"}
        if not isinstance(choice, dict) or not set(choice) <= allowed:
            raise ValueError(f"thresholds must be a JSON object with keys among {sorted(allowed)}.")
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                   for v in choice.values()):
            raise ValueError("each threshold must be a number or null.")
        with self._model_lock:
            # On a copy: a bad value or a failed write leaves the served model as it was.
            pipeline = copy.deepcopy(self.pipeline)
            set_thresholds(pipeline, **choice)
            save_model(pipeline, self.save_to)
            self.pipeline = pipeline
            self._model_info = _model_info(pipeline, self.save_to)
        return {**self._model_info, "saved": str(self.save_to)}

    def _score_paths(self):
        """The folder scan: score the given files one by one, recording each."""
        for path in self._paths:
            try:
                self.score_image(path, Path(path).name, "folder")
            finally:
                with self._results_lock:
                    self.pending -= 1

    def serve_forever(self, poll_interval=0.5):
        """Serve until :meth:`shutdown`; the folder scan starts with the first call."""
        if self._paths and self._scan is None:
            self._scan = threading.Thread(target=self._score_paths, daemon=True)
            self._scan.start()
        super().serve_forever(poll_interval)

    def snapshot(self, since=0):
        """Results from the ``since``-th on, the total so far, and how many
        folder images are still to be scored (what ``/api/results`` sends)."""
        with self._results_lock:
            return {"results": self.results[since:], "total": len(self.results),
                    "pending": self.pending}

    def start(self):
        """Serve in a background thread; returns ``self`` (see :meth:`close`)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self):
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


def _model_info(pipeline, save_to=None):
    """What the page needs to apply thresholds itself."""
    from .calibration import pixel_threshold
    from .maps import _draws_maps

    head = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else None
    if head is None or not hasattr(head, "offset_"):
        raise ValueError(
            f"serve needs a fitted skanomaly pipeline, got a {type(pipeline).__name__}."
        )
    has_maps = _draws_maps(head)
    rates = sorted(set(PIXEL_RATES) | {float(head.contamination)})
    return {
        "model": " -> ".join(type(step).__name__ for _, step in pipeline.steps),
        "offset": float(head.offset_),
        "contamination": float(head.contamination),
        "n_calibration": int(len(head.calibration_scores_)),
        "has_maps": bool(has_maps),
        "pixel_threshold": pixel_threshold(pipeline) if has_maps else None,
        "pixel_rates": [[r, pixel_threshold(pipeline, r)] for r in rates] if has_maps else [],
        "save_to": None if save_to is None else str(save_to),
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "skanomaly"

    def _content_length(self):
        """The request's declared body size; -1 when it is not a number."""
        try:
            return int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return -1

    def _read_json(self, limit=2**16):
        length = self._content_length()
        if not 0 < length <= limit:
            self.close_connection = True  # the body, if any, is left unread
            raise ValueError(f"the body must be a JSON object of 1 byte to {limit} bytes.")
        try:
            return json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"the body is not JSON ({exc}).") from None

    def _thresholds(self):
        try:
            info = self.server.save_thresholds(self._read_json())
        except PermissionError as exc:
            self._json(HTTPStatus.FORBIDDEN, {"error": str(exc)})
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"thresholds not saved: {exc}"})
        except OSError as exc:  # the file could not be written: nothing changed
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"thresholds not saved: {exc}"})
        else:
            self._json(HTTPStatus.OK, info)

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # the page reports errors; no line per request on the console

    def _send(self, status, body, content_type):
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status, payload):
        self._send(status, json.dumps(payload), "application/json")

    def do_GET(self):  # noqa: N802 (http.server's name)
        parts = urllib.parse.urlsplit(self.path)
        route = parts.path
        if route in ("/", "/index.html"):
            self._send(HTTPStatus.OK, _page(self.server._model_info), "text/html; charset=utf-8")
        elif route == "/api/model":
            self._json(HTTPStatus.OK, self.server._model_info)
        elif route == "/api/results":
            since = urllib.parse.parse_qs(parts.query).get("since", ["0"])[0]
            if not since.isdigit():
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"since must be a count, got {since!r}"})
                return
            self._json(HTTPStatus.OK, self.server.snapshot(int(since)))
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing is served at {route}"})

    def _same_origin(self):
        """False for a browser's request from a page this server did not serve."""
        origin = self.headers.get("Origin")
        if origin is None:  # not sent by a browser page (curl, scripts): no cross-site risk
            return True
        host = self.headers.get("Host", "")
        return origin in (f"http://{host}", f"https://{host}")

    def do_POST(self):  # noqa: N802
        route = urllib.parse.urlsplit(self.path).path
        if route not in ("/api/images", "/api/thresholds"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"nothing is served at {route}"})
            return
        if not self._same_origin():
            self.close_connection = True
            self._json(HTTPStatus.FORBIDDEN, {"error": "requests from another site's page are refused."})
            return
        if route == "/api/thresholds":
            self._thresholds()
            return
        name = urllib.parse.unquote(self.headers.get("X-Filename", "upload")) or "upload"
        name = Path(name).name  # a name to show, never a path to open
        length = self._content_length()
        if not 0 <= length <= MAX_UPLOAD:
            self.close_connection = True
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > MAX_UPLOAD
                       else HTTPStatus.BAD_REQUEST,
                       {"error": f"{name}: uploads must be 1 byte to {MAX_UPLOAD // 2**20} MiB."})
            return
        result = self.server.score_image(self.rfile.read(length), name, "upload")
        status = HTTPStatus.BAD_REQUEST if "error" in result else HTTPStatus.OK
        self._json(status, result)


def make_server(pipeline, images=(), *, host="127.0.0.1", port=8765, save_to=None):
    """Build the inspection app's server around a fitted pipeline.

    The images of ``images`` (files, or folders searched recursively) are
    scored in a background thread once :meth:`InspectionServer.start` or
    ``serve_forever`` runs; the page shows them as they come.

    Parameters
    ----------
    pipeline : fitted Pipeline
        A fitted skanomaly pipeline (e.g. from :func:`skanomaly.make_patchcore`
        or ``skanomaly.persistence.load_model``).
    images : sequence of str or path-like, default=()
        Image files and folders to score and show.
    host : str, default="127.0.0.1"
        Address to bind: the loopback address serves this machine only.
    port : int, default=8765
        Port; 0 picks a free one (see ``server.url``).
    save_to : str or path-like or None, default=None
        File the page's Save button writes the model to, with the
        thresholds its sliders show (``.skops`` or joblib, as
        :func:`~skanomaly.persistence.save_model`); None disables the button.

    Returns
    -------
    server : InspectionServer
        Call ``server.start()`` (background thread) or ``server.serve_forever()``;
        ``server.close()`` stops it.

    Raises
    ------
    ValueError
        If ``pipeline`` is not fitted, or an item of ``images`` does not
        exist or is a folder without images.

    Examples
    --------
    >>> import json, urllib.request
    >>> import numpy as np
    >>> from skanomaly import make_patchcore
    >>> from skanomaly.serve import make_server
    >>> rng = np.random.default_rng(0)
    >>> pipe = make_patchcore(image_size=32, contamination=0.2,
    ...                       random_state=0).fit(rng.random((12, 32, 32, 3)))
    >>> server = make_server(pipe, port=0).start()
    >>> info = json.load(urllib.request.urlopen(server.url + "api/model"))
    >>> info["offset"] == pipe[-1].offset_
    True
    >>> server.close()
    """
    from skanomaly_runtime.images import image_files

    paths = image_files(images) if len(images) else []
    return InspectionServer(pipeline, (host, port), paths, save_to)


def _page(info):
    """The app's one HTML document; the model's thresholds are embedded."""
    return _PAGE.replace("__MODEL_INFO__", json.dumps(info).replace("</", "<\\/"))


_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>skanomaly inspection</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}
#bar{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
fieldset{border:1px solid #bbb;border-radius:6px;padding:.4em .8em}
fieldset input[type=range]{width:16em}
#drop{border:2px dashed #999;border-radius:6px;padding:.8em 1.2em}
#drop.over{background:#eef}
#messages div{background:#fde2e1;border:1px solid #e88;padding:.3em .6em;margin:.3em 0}
#messages div.ok{background:#e3f6e3;border-color:#7b7}
#counts{font-size:1.1em;font-weight:600}
table{border-collapse:collapse;margin-top:.6em}
th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f3f3f3;user-select:none}
td.name,th[data-key=name]{text-align:left}
tr.flagged td.label{color:#b00;font-weight:600}
tr.failed td{color:#999}
td.error{white-space:normal;text-align:left;max-width:22em;color:#b00}
tr.selected{background:#ffd}
#main{display:flex;gap:1.5em;align-items:flex-start}
#results{flex:0 0 auto}
#detail{position:sticky;top:1em;flex:1 1 auto;min-width:300px}
#stack{position:relative;display:inline-block}
#stack{max-width:100%}
#stack img{display:block;max-width:100%}
#stack canvas{position:absolute;left:0;top:0;width:100%;height:100%}
img.thumb{height:40px;vertical-align:middle}
</style></head>
<body>
<h1>skanomaly inspection</h1>
<p id="model-line"></p>
<div id="bar">
 <div id="drop">Drop images here or <input type="file" id="upload" multiple></div>
 <fieldset id="image-threshold"><legend>Image threshold</legend>
  <label><input type="radio" name="image-mode" value="rate" checked> false-alarm rate</label>
  <label><input type="radio" name="image-mode" value="raw"> raw score</label><br>
  <input type="range" id="image-slider"> <output id="image-value"></output>
 </fieldset>
 <fieldset id="pixel-threshold"><legend>Pixel threshold</legend>
  <label><input type="radio" name="pixel-mode" value="rate" checked> false-alarm rate</label>
  <label><input type="radio" name="pixel-mode" value="raw"> raw map value</label><br>
  <input type="range" id="pixel-slider"> <output id="pixel-value"></output>
 </fieldset>
 <div><div id="counts"></div><div id="status"></div>
  <button id="export-csv">Export CSV</button>
  <button id="save-thresholds">Save thresholds to model</button></div>
</div>
<div id="messages"></div>
<div id="main">
 <table id="results"><thead><tr>
  <th data-key="id">#</th><th data-key="name">image</th><th data-key="score">score</th>
  <th data-key="p_value">p-value</th><th data-key="label">label</th>
  <th data-key="area">defect area %</th><th data-key="boxes">boxes</th><th>overlay</th>
 </tr></thead><tbody></tbody></table>
 <div id="detail"></div>
</div>
<script>
"use strict";
const MODEL = __MODEL_INFO__;
const S = {results: new Map(), sortKey: "score", sortAsc: true, imageMode: "rate",
           imageRate: MODEL.contamination, imageRaw: MODEL.offset, pixelMode: "rate",
           pixelIndex: 0, pixelRaw: MODEL.pixel_threshold || 0, selected: null, maps: new Map(),
           since: 0, pending: 0};
S.pixelIndex = Math.max(0, MODEL.pixel_rates.findIndex(r => r[0] === MODEL.contamination));
const $ = id => document.getElementById(id);

function fmt(x, d) { return x === undefined || x === null ? "" : Number(x).toFixed(d); }
function message(text, ok) {
  const div = document.createElement("div"); div.textContent = text;
  if (ok) div.className = "ok";
  $("messages").prepend(div);
}
function mapOf(r) {
  if (!r.map) return null;
  if (!S.maps.has(r.id)) {
    const bytes = Uint8Array.from(atob(r.map.data), c => c.charCodeAt(0));
    S.maps.set(r.id, new Float32Array(bytes.buffer));
  }
  return S.maps.get(r.id);
}
function pixelThreshold() {
  return S.pixelMode === "rate" ? MODEL.pixel_rates[S.pixelIndex][1] : S.pixelRaw;
}
// Image labels: p <= rate is predict's rule at contamination = rate; a raw
// threshold flags scores below it (higher scores are more normal).
function isFlagged(r) {
  if (r.error) return false;
  return S.imageMode === "rate" ? r.p_value <= S.imageRate + 1e-12 : r.score < S.imageRaw;
}
// Mask (map > threshold) and the boxes of its 8-connected regions.
function regions(r) {
  const m = mapOf(r);
  if (!m) return {area: null, boxes: []};
  const w = r.map.width, h = r.map.height, t = pixelThreshold();
  const mask = new Uint8Array(w * h), seen = new Uint8Array(w * h), boxes = [];
  let n = 0;
  for (let i = 0; i < m.length; i++) if (m[i] > t) { mask[i] = 1; n++; }
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i] || seen[i]) continue;
    let x0 = w, y0 = h, x1 = -1, y1 = -1; const stack = [i]; seen[i] = 1;
    while (stack.length) {
      const j = stack.pop(), x = j % w, y = (j - x) / w;
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
        const u = x + dx, v = y + dy, k = v * w + u;
        if (u >= 0 && u < w && v >= 0 && v < h && mask[k] && !seen[k]) { seen[k] = 1; stack.push(k); }
      }
    }
    boxes.push([x0, y0, x1 + 1, y1 + 1]);
  }
  return {mask, area: 100 * n / mask.length, boxes};
}
function rowValues(r) {
  const reg = regions(r), flagged = isFlagged(r);
  return {r, flagged, reg, label: r.error ? "error" : (flagged ? "-1 anomalous" : "+1 normal"),
          area: reg.area, boxes: reg.boxes.length};
}
function sortValue(v, key) {
  if (key === "label") return v.flagged ? 0 : 1;
  if (key === "area" || key === "boxes") return v[key] === null ? -1 : v[key];
  const x = v.r[key];
  return x === undefined ? (key === "name" ? "" : Infinity) : x;
}
function render() {
  const rows = [...S.results.values()].map(rowValues);
  const k = S.sortKey, sign = S.sortAsc ? 1 : -1;
  rows.sort((a, b) => { const x = sortValue(a, k), y = sortValue(b, k);
                        return (x < y ? -1 : x > y ? 1 : a.r.id - b.r.id) * sign; });
  const body = document.querySelector("#results tbody");
  body.replaceChildren(...rows.map(v => {
    const tr = document.createElement("tr");
    tr.dataset.id = v.r.id;
    tr.className = (v.flagged ? "flagged " : "") + (v.r.error ? "failed " : "") +
                   (S.selected === v.r.id ? "selected" : "");
    const cells = [v.r.id, v.r.name, v.r.error ? v.r.error : fmt(v.r.score, 4),
                   fmt(v.r.p_value, 3), v.label, v.area === null ? "" : fmt(v.area, 2),
                   v.r.error || !MODEL.has_maps ? "" : v.boxes];
    ["id", "name", v.r.error ? "score error" : "score", "pvalue", "label", "area", "boxes"].forEach((cls, i) => {
      const td = document.createElement("td"); td.className = cls; td.textContent = cells[i]; tr.append(td);
    });
    const td = document.createElement("td");
    if (v.r.overlay) { const img = document.createElement("img"); img.className = "thumb"; img.src = v.r.overlay; td.append(img); }
    tr.append(td);
    tr.onclick = () => { S.selected = v.r.id; render(); };
    return tr;
  }));
  const scored = rows.filter(v => !v.r.error), flagged = scored.filter(v => v.flagged).length;
  $("counts").textContent = `${flagged} of ${scored.length} flagged`;
  $("counts").dataset.flagged = flagged;
  const failed = rows.length - scored.length;
  $("status").textContent = `${scored.length} scored` + (failed ? `, ${failed} unreadable` : "") +
                            (S.pending ? `, ${S.pending} waiting` : "");
  document.querySelectorAll("th[data-key]").forEach(th =>
    th.dataset.sorted = th.dataset.key === k ? (S.sortAsc ? "asc" : "desc") : "");
  renderControls(rows);
  renderDetail(rows.find(v => v.r.id === S.selected));
}
function renderControls(rows) {
  const im = $("image-slider"), px = $("pixel-slider");
  if (S.imageMode === "rate") {
    Object.assign(im, {min: 0, max: 0.5, step: 0.001}); im.value = S.imageRate;
    $("image-value").textContent = `flag p-value <= ${fmt(S.imageRate, 3)}`;
  } else {
    const s = rows.filter(v => !v.r.error).map(v => v.r.score).concat([MODEL.offset]);
    const lo = Math.min(...s), hi = Math.max(...s), pad = (hi - lo) * 0.05 || 1;
    Object.assign(im, {min: lo - pad, max: hi + pad, step: (hi - lo + 2 * pad) / 1000}); im.value = S.imageRaw;
    $("image-value").textContent = `flag score < ${fmt(S.imageRaw, 4)}`;
  }
  if (!MODEL.has_maps) { $("pixel-threshold").disabled = true; $("pixel-value").textContent = "no maps"; return; }
  if (S.pixelMode === "rate") {
    Object.assign(px, {min: 0, max: MODEL.pixel_rates.length - 1, step: 1}); px.value = S.pixelIndex;
    const [rate, t] = MODEL.pixel_rates[S.pixelIndex];
    $("pixel-value").textContent = `${fmt(100 * rate, 2)}% of normal images with a mask (map > ${fmt(t, 4)})`;
  } else {
    const hi = 4 * MODEL.pixel_threshold;
    Object.assign(px, {min: 0, max: hi, step: hi / 1000}); px.value = S.pixelRaw;
    $("pixel-value").textContent = `map > ${fmt(S.pixelRaw, 4)}`;
  }
}
function renderDetail(v) {
  const d = $("detail");
  if (!v || v.r.error) { d.replaceChildren(); return; }
  const title = document.createElement("p");
  title.textContent = `${v.r.name}: score ${fmt(v.r.score, 4)}, p-value ${fmt(v.r.p_value, 3)}, ${v.label}`;
  const stack = document.createElement("div"); stack.id = "stack";
  const img = document.createElement("img"); img.src = v.r.overlay; img.id = "detail-image";
  stack.append(img);
  if (v.reg.mask) {
    const c = document.createElement("canvas"), w = v.r.map.width, h = v.r.map.height;
    c.id = "detail-mask"; c.width = w * 4; c.height = h * 4;
    const g = c.getContext("2d");
    g.fillStyle = "rgba(0,255,0,0.25)";
    for (let i = 0; i < v.reg.mask.length; i++) if (v.reg.mask[i]) g.fillRect((i % w) * 4, Math.floor(i / w) * 4, 4, 4);
    g.strokeStyle = "#0f0"; g.lineWidth = 2;
    for (const [x0, y0, x1, y1] of v.reg.boxes) g.strokeRect(x0 * 4, y0 * 4, (x1 - x0) * 4, (y1 - y0) * 4);
    stack.append(c);
  }
  d.replaceChildren(title, stack);
}
function csv() {
  const q = s => `"${String(s).replaceAll('"', '""')}"`;
  const lines = [["image", "score", "p_value", "label", "defect_area_percent", "boxes", "error"].join(",")];
  for (const v of [...S.results.values()].map(rowValues)) {
    lines.push([q(v.r.name), v.r.error ? "" : v.r.score, v.r.error ? "" : v.r.p_value,
                v.r.error ? "" : (v.flagged ? -1 : 1), v.area === null ? "" : v.area.toFixed(4),
                v.r.error || !MODEL.has_maps ? "" : v.boxes, q(v.r.error || "")].join(","));
  }
  return lines.join("\n") + "\n";
}
window.skanomalyCsv = csv;
function add(results) { for (const r of results) S.results.set(r.id, r); render(); }
async function upload(files) {
  for (const file of files) {
    try {
      const res = await fetch("/api/images", {method: "POST", body: file,
                                 headers: {"X-Filename": encodeURIComponent(file.name)}});
      const r = await res.json();
      if (r.error) message(r.error);
      if (r.id !== undefined) { S.selected = r.error ? S.selected : r.id; add([r]); }
    } catch (e) { message(`${file.name}: upload failed (${e})`); }
  }
}
async function poll() {
  const res = await fetch(`/api/results?since=${S.since}`), body = await res.json();
  S.pending = body.pending; S.since = body.total;
  for (const r of body.results) if (r.error && !S.results.has(r.id) && r.source === "folder") message(r.error);
  add(body.results);
  if (body.pending) setTimeout(poll, 1000);
}
$("upload").onchange = e => { upload([...e.target.files]); e.target.value = ""; };
const drop = $("drop");
document.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
document.addEventListener("dragleave", () => drop.classList.remove("over"));
document.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over");
                                         upload([...e.dataTransfer.files]); });
document.querySelectorAll("input[name=image-mode]").forEach(el => el.onchange = () => {
  S.imageMode = el.value; render(); });
document.querySelectorAll("input[name=pixel-mode]").forEach(el => el.onchange = () => {
  S.pixelMode = el.value; render(); });
$("image-slider").oninput = e => {
  const x = Number(e.target.value);
  if (S.imageMode === "rate") S.imageRate = x; else S.imageRaw = x;
  render(); };
$("pixel-slider").oninput = e => {
  const x = Number(e.target.value);
  if (S.pixelMode === "rate") S.pixelIndex = x; else S.pixelRaw = x;
  render(); };
document.querySelectorAll("th[data-key]").forEach(th => th.onclick = () => {
  if (S.sortKey === th.dataset.key) S.sortAsc = !S.sortAsc; else { S.sortKey = th.dataset.key; S.sortAsc = true; }
  render(); });
$("export-csv").onclick = () => {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([csv()], {type: "text/csv"}));
  a.download = "skanomaly_results.csv"; a.click(); };
// The thresholds the sliders show, as set_thresholds takes them.
function chosenThresholds() {
  const c = S.imageMode === "rate" ? {false_alarm_rate: S.imageRate} : {offset: S.imageRaw};
  if (MODEL.has_maps) {
    if (S.pixelMode === "rate") c.pixel_false_alarm_rate = MODEL.pixel_rates[S.pixelIndex][0];
    else c.pixel_value = S.pixelRaw;
  }
  return c;
}
window.skanomalyChosenThresholds = chosenThresholds;
const save = $("save-thresholds");
if (!MODEL.save_to) { save.disabled = true; save.title = "start the app with --save-to FILE to save"; }
save.onclick = async () => {
  try {
    const res = await fetch("/api/thresholds", {method: "POST", body: JSON.stringify(chosenThresholds()),
                                                headers: {"Content-Type": "application/json"}});
    const body = await res.json();
    if (body.error) { message(body.error); return; }
    Object.assign(MODEL, body);
    message(`saved to ${body.saved}: predict flags score < ${fmt(body.offset, 4)} ` +
            `(false-alarm rate ${fmt(body.contamination, 3)})` +
            (MODEL.has_maps ? `, masks where map > ${fmt(body.pixel_threshold, 4)}` : ""), true);
  } catch (e) { message(`thresholds not saved (${e})`); }
};
$("model-line").textContent = `${MODEL.model}; threshold set on ${MODEL.n_calibration} normal images the model had not learnt from` +
  (MODEL.has_maps ? "" : " (image-level method: no maps)");
render(); poll();
</script></body></html>
"""
