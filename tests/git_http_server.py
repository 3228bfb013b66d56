"""A tiny GitLab stand-in for tests: bare repositories over real smart HTTP.

`GitHttpServer(root, token)` serves every bare repository under `root` by
running `git http-backend` as a CGI program, behind HTTP Basic auth that wants
the password to equal `token` (and the user to equal `username`, if given),
answering 401 with `WWW-Authenticate: Basic realm="GitLab"` otherwise, as
GitLab does. On the same port it answers the commit-status endpoint
`POST /api/v4/projects/<id or url-encoded path>/statuses/<sha>` (checking the
`PRIVATE-TOKEN` header) and `GET /api/v4/projects/<id>`, enough for
python-gitlab; and the merge request endpoints set-image uses: list a project's merge requests (by
`source_branch` and `state`), create one, update one (`PUT .../merge_requests/<iid>`).

    with GitHttpServer(tmp_path / "srv", token="s3cret") as server:
        url = server.url_for("group/repo")   # http://127.0.0.1:PORT/group/repo.git
        server.api_url                        # http://127.0.0.1:PORT
        server.requests, server.statuses, server.merge_requests, server.unhandled
        server.delay = 2                      # sleep before answering each request
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

_CGI_PASS_HEADERS = ("Content-Encoding", "Git-Protocol", "Accept", "Accept-Encoding", "User-Agent")


class GitHttpServer:
    def __init__(self, root: Path, token: str, username: str | None = None):
        self.root = Path(root)
        self.token = token
        self.username = username
        self.delay = 0.0
        self.requests: list[dict] = []  # every request: method, path, status, user, authorized
        self.statuses: list[dict] = []  # commit statuses posted: project, sha, body
        self.merge_requests: list[dict] = []  # as GitLab stores them: iid, source/target branch, title, ...
        self.unhandled: list[str] = []  # API paths the stand-in does not know
        self._lock = threading.Lock()
        self._next_status_id = 1
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    def __enter__(self) -> GitHttpServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="git-http-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "use GitHttpServer as a context manager"
        return self._httpd.server_address[1]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, repo_name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo_name}.git"

    def _record(self, entry: dict) -> None:
        with self._lock:
            self.requests.append(entry)


class _Handler(BaseHTTPRequestHandler):
    server_owner: GitHttpServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def _dispatch(self):
        owner = self.server_owner
        if owner.delay:
            time.sleep(owner.delay)
        path = urlsplit(self.path).path
        if path.startswith("/api/v4/"):
            self._api(path)
        else:
            self._git()

    # -- plumbing -------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def _basic_auth(self) -> tuple[str | None, bool]:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except Exception:
            return None, False
        owner = self.server_owner
        ok = password == owner.token and (owner.username is None or user == owner.username)
        return user, ok

    # -- git smart HTTP -------------------------------------------------------

    def _git(self) -> None:
        owner = self.server_owner
        parts = urlsplit(self.path)
        user, ok = self._basic_auth()
        entry = {"kind": "git", "method": self.command, "path": parts.path, "query": parts.query,
                 "user": user, "authorized": ok}
        if not ok:
            body = self._body()  # drain
            del body
            entry["status"] = 401
            owner._record(entry)
            self._send(401, b"HTTP Basic: Access denied\n",
                       {"WWW-Authenticate": 'Basic realm="GitLab"', "Content-Type": "text/plain"})
            return
        body = self._body()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({
            "GIT_PROJECT_ROOT": str(owner.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": unquote(parts.path),
            "QUERY_STRING": parts.query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user or "",
            "REMOTE_ADDR": self.client_address[0],
            "SERVER_PROTOCOL": "HTTP/1.1",
            "GATEWAY_INTERFACE": "CGI/1.1",
        })
        for header in _CGI_PASS_HEADERS:
            if header in self.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        done = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, timeout=60)
        raw = done.stdout
        sep = raw.find(b"\r\n\r\n")
        head, rest = (raw[:sep], raw[sep + 4:]) if sep >= 0 else raw.partition(b"\n\n")[::2]
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        headers.pop("Content-Length", None)
        if done.returncode != 0 and not raw:
            status, rest = 500, done.stderr
        entry["status"] = status
        owner._record(entry)
        self._send(status, rest, headers)

    # -- GitLab API stand-in --------------------------------------------------

    def _api(self, path: str) -> None:
        owner = self.server_owner
        segments = path[len("/api/v4/"):].split("/")
        entry = {"kind": "api", "method": self.command, "path": path,
                 "authorized": self.headers.get("PRIVATE-TOKEN") == owner.token}
        body = self._body()
        if not entry["authorized"]:
            entry["status"] = 401
            owner._record(entry)
            self._json(401, {"message": "401 Unauthorized"})
            return
        if self.command == "POST" and len(segments) == 4 and segments[0] == "projects" and segments[2] == "statuses":
            project, sha = unquote(segments[1]), segments[3]
            ctype = self.headers.get("Content-Type", "")
            if "json" in ctype:
                data = json.loads(body or b"{}")
            else:
                data = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            with owner._lock:
                status_id = owner._next_status_id
                owner._next_status_id += 1
                owner.statuses.append({"project": project, "sha": sha, "body": data})
            entry["status"] = 201
            owner._record(entry)
            self._json(201, {
                "id": status_id, "sha": sha, "ref": data.get("ref"), "status": data.get("state"),
                "name": data.get("name") or data.get("context") or "default",
                "description": data.get("description"), "target_url": data.get("target_url"),
                "allow_failure": False, "coverage": None, "author": {"username": "stand-in"},
            })
            return
        if len(segments) >= 3 and segments[0] == "projects" and segments[2] == "merge_requests":
            self._merge_requests(entry, unquote(segments[1]), segments[3:], body)
            return
        if self.command == "GET" and len(segments) == 2 and segments[0] == "projects":
            project = unquote(segments[1])
            entry["status"] = 200
            owner._record(entry)
            self._json(200, {"id": int(project) if project.isdigit() else 1,
                             "path_with_namespace": project if not project.isdigit() else f"project-{project}"})
            return
        with owner._lock:
            owner.unhandled.append(f"{self.command} {path}")
        entry["status"] = 404
        owner._record(entry)
        self._json(404, {"message": "404 Not Found"})

    def _merge_requests(self, entry: dict, project: str, rest: list[str], body: bytes) -> None:
        owner = self.server_owner
        data = json.loads(body or b"{}") if "json" in self.headers.get("Content-Type", "") else {
            k: v[-1] for k, v in parse_qs(body.decode()).items()}
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        status, answer = 404, {"message": "404 Not Found"}
        with owner._lock:
            mine = [mr for mr in owner.merge_requests if mr["project_id"] == project]
            if self.command == "GET" and not rest:
                status, answer = 200, [mr for mr in mine if all(
                    mr.get(key) == query[key] for key in ("source_branch", "state", "target_branch") if key in query)]
            elif self.command == "POST" and not rest:
                if any(mr["source_branch"] == data.get("source_branch") and mr["state"] == "opened" for mr in mine):
                    status, answer = 409, {"message": ["Another open merge request already exists for this source branch"]}
                else:
                    iid = len(mine) + 1
                    mr = {"id": 1000 + len(owner.merge_requests), "iid": iid, "project_id": project, "state": "opened",
                          "web_url": f"{owner.api_url}/project-{project}/-/merge_requests/{iid}", **data}
                    owner.merge_requests.append(mr)
                    status, answer = 201, mr
            elif self.command == "PUT" and len(rest) == 1:
                for mr in mine:
                    if str(mr["iid"]) == rest[0]:
                        mr.update({k: v for k, v in data.items() if k not in ("id", "iid", "project_id", "web_url")})
                        mr["updates"] = mr.get("updates", 0) + 1
                        status, answer = 200, mr
        if status == 404:
            with owner._lock:
                owner.unhandled.append(f"{self.command} {self.path}")
        entry["status"] = status
        owner._record(entry)
        self._json(status, answer)
