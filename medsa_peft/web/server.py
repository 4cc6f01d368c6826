"""The web demo over HTTP: Python's standard-library server, the page in `static/`, and a small JSON API.

    GET  /                                   the page (static/index.html; static/app.js, static/style.css)
    POST /api/upload                         multipart form: `file` (one, or the files of a DICOM series),
                                             `modality` (empty: the file's) -> the image (DemoSession.describe)
    GET  /api/sessions/<id>/slices/<z>.png   slice z with its mask
    POST /api/sessions/<id>/click            JSON {"slice": z, "x": x, "y": y, "label": 1 or 0} -> the state
    POST /api/sessions/<id>/undo             take the last click back -> the state
    POST /api/sessions/<id>/start-over       forget every click -> the state
    GET  /api/sessions/<id>/mask             the mask file: NIfTI for volumes, PNG for pictures

The state (`DemoSession.state`) is {"slice": the slice changed, "pixels": its mask pixels, "iou": SAM's predicted
IoU of its mask, "clicks": {"z": [[x, y, label], ...] for every slice clicked}}.

Errors come back as JSON {"error": one line} with status 400 (the request or the file), 404 (no such session or
path), 413 (upload too large) or 500 (a fault of the demo, logged with its traceback; the page gets its type).
Requests and errors go to the `logging` logger of this module; nothing is printed.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import logging
import re
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .app import DemoApp, SessionNotFoundError

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DemoServer"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}
DEFAULT_MAX_UPLOAD_BYTES = 1024**3
_SESSION_PATH = re.compile(r"/api/sessions/(?P<session>[\w-]+)/(?P<action>[\w-]+|slices/(?P<slice>\d+)\.png)")
_MAX_JSON_BYTES = 1024**2
_CHUNK_BYTES = 1024**2


class _RequestError(Exception):
    """An HTTP error with its status, raised inside a handler and answered as JSON."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server for a `DemoApp`; `serve_forever` serves, `shutdown` (from another thread) stops.

    address: (host, port); port 0 takes a free port (see `url`). max_upload_bytes: the largest request body.
    """

    daemon_threads = True

    def __init__(
        self,
        app: DemoApp,
        address: tuple[str, int] = ("127.0.0.1", 0),
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ):
        self.app, self.max_upload_bytes = app, max_upload_bytes
        self.static = {f"/static/{path.name}": path for path in STATIC.iterdir() if path.suffix in CONTENT_TYPES}
        self.static["/"] = STATIC / "index.html"
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def handle_error(self, request, client_address) -> None:
        logger.exception("request from %s failed", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer  # HTTP/1.0: one request per connection, so a body left unread after an error harms nothing

    def log_message(self, format: str, *args) -> None:
        logger.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, route) -> None:
        """Run `route` and send what it returns, or its error as JSON."""
        app = self.server.app
        try:
            route(self.path.split("?", 1)[0])
        except _RequestError as error:
            self._send_json({"error": str(error)}, error.status)
        except SessionNotFoundError as error:
            self._send_json({"error": app.public_message(error)}, HTTPStatus.NOT_FOUND)
        except (ValueError, OSError) as error:  # the library's one-line errors about the file or the request
            logger.info("%s %s: %s", self.command, self.path, app.public_message(error))
            self._send_json({"error": app.public_message(error)}, HTTPStatus.BAD_REQUEST)
        except Exception as error:
            logger.exception("%s %s failed", self.command, self.path)
            message = f"internal error of the demo ({type(error).__name__}); the server's log has the details"
            self._send_json({"error": message}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, path: str) -> None:
        if path in self.server.static:
            file = self.server.static[path]
            return self._send(file.read_bytes(), CONTENT_TYPES[file.suffix])
        match = _SESSION_PATH.fullmatch(path)
        app = self.server.app
        if match is not None and match["action"] == "mask":
            mask = app.mask_file(match["session"])
            return self._send(mask.read_bytes(), "application/octet-stream", download=mask.name)
        if match is not None and match["slice"] is not None:
            return self._send(app.slice_png(match["session"], int(match["slice"])), "image/png")
        raise _RequestError(HTTPStatus.NOT_FOUND, f"nothing at {path}")

    def _post(self, path: str) -> None:
        app = self.server.app
        if path == "/api/upload":
            files, fields = self._form()
            session = app.upload(files, fields.get("modality") or None)
            return self._send_json(session.describe())
        match = _SESSION_PATH.fullmatch(path)
        action = match and match["action"]
        if action == "click":
            click = self._json()
            state = app.click(match["session"], click.get("slice"), click.get("x"), click.get("y"), click.get("label"))
        elif action == "undo":
            state = app.undo(match["session"])
        elif action == "start-over":
            state = app.start_over(match["session"])
        else:
            raise _RequestError(HTTPStatus.NOT_FOUND, f"nothing to post at {path}")
        self._send_json(state)

    def _body(self, limit: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "the request has no Content-Length")
        if int(length) > limit:
            for start in range(0, int(length), _CHUNK_BYTES):  # read, so that the browser gets the answer
                self.rfile.read(min(_CHUNK_BYTES, int(length) - start))
            raise _RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the upload has {int(length)} bytes, over the server's limit of {limit} bytes",
            )
        return self.rfile.read(int(length))

    def _json(self) -> dict:
        try:
            request = json.loads(self._body(_MAX_JSON_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise _RequestError(HTTPStatus.BAD_REQUEST, f"the request is not JSON ({error})") from error
        if not isinstance(request, dict):
            raise _RequestError(HTTPStatus.BAD_REQUEST, "the request must be a JSON object")
        return request

    def _form(self) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """The (file name, content) pairs and the text fields of a multipart/form-data body."""
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _RequestError(HTTPStatus.BAD_REQUEST, "upload the file as multipart/form-data (an HTML form)")
        body = self._body(self.server.max_upload_bytes)
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
        )
        if not message.is_multipart():
            raise _RequestError(HTTPStatus.BAD_REQUEST, "the upload is not a well-formed multipart form")
        files, fields = [], {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                files.append((part.get_filename(), part.get_payload(decode=True) or b""))
            elif name:
                fields[name] = part.get_content().strip()
        return files, fields

    def _send(self, content: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK, download: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        if download:
            self.send_header("Content-Disposition", f'attachment; filename="{download}"')
        self.end_headers()
        self.wfile.write(content)

    def _send_json(self, data: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(data).encode(), "application/json", status)
