"""A loopback stand-in for the Hugging Face Hub, for tests of the real huggingface_hub client.

It serves repositories held in memory (commits of ``{path: bytes}``) on 127.0.0.1 and
implements what ``hf_hub_download`` and ``HfApi.upload_folder`` ask of the Hub: the
``resolve`` endpoint (HEAD/GET, Range), revision info, repository creation, YAML
validation, pre-upload and NDJSON commits. It records every request it gets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    commits: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)  # oldest first

    def resolve(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        if revision == "main" and self.commits:
            return self.commits[-1]
        return next((c for c in self.commits if c[0] == revision), None)


class FakeHub:
    """In-memory repositories served over HTTP on an ephemeral loopback port."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._counter = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                return None

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Add a commit holding ``files`` (on top of the previous commit's files); returns its sha."""
        self._counter += 1
        sha = hashlib.sha1(f"{repo_id}-{self._counter}".encode(), usedforsecurity=False).hexdigest()
        repo = self.repos.setdefault(repo_id, Repo())
        previous = dict(repo.commits[-1][1]) if repo.commits else {}
        repo.commits.append((sha, {**previous, **files}))
        return sha

    # ------------------------------------------------------------------ HTTP
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = urlparse(request.path).path
        self.requests.append((method, path))
        body = b""
        if method == "POST":
            body = request.rfile.read(int(request.headers.get("Content-Length", "0") or 0))
        if "/resolve/" in path:
            return self._resolve(request, method, path)
        if method == "GET" and path.startswith("/api/models/") and "/revision/" in path:
            repo_id, revision = path.removeprefix("/api/models/").split("/revision/", 1)
            found = self._lookup(request, repo_id, unquote(revision))
            if found:
                sha, files = found
                self._json(request, 200, {"id": repo_id, "sha": sha, "siblings": [{"rfilename": f} for f in files]})
            return None
        if method == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in self.repos:
                return self._json(request, 409, {"error": "You already created this model repo"})
            self.repos[repo_id] = Repo()
            return self._json(request, 200, {"url": f"{self.endpoint}/{repo_id}"})
        if method == "POST" and path == "/api/validate-yaml":
            return self._json(request, 200, {"errors": [], "warnings": []})
        if method == "POST" and "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._json(request, 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if method == "POST" and "/commit/" in path:
            repo_id = path.removeprefix("/api/models/").split("/commit/", 1)[0]
            files = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            sha = self.commit(repo_id, files)
            return self._json(request, 200, {"commitOid": sha, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}", "pullRequestUrl": None})
        return self._json(request, 404, {"error": f"fake hub: no route for {method} {path}"})

    def _lookup(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str):
        repo = self.repos.get(repo_id)
        if repo is None or not repo.commits:
            self._json(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return None
        found = repo.resolve(revision)
        if found is None:
            self._json(request, 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
        return found

    def _resolve(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        head, filename = path.lstrip("/").split("/resolve/", 1)
        revision, filename = filename.split("/", 1)
        found = self._lookup(request, head, unquote(revision))
        if found is None:
            return
        sha, files = found
        if filename not in files:
            self._json(request, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
            return
        data = files[filename]
        etag = hashlib.sha256(data).hexdigest() if filename.endswith(LFS_SUFFIXES) else _git_blob_sha1(data)
        start, status = 0, 200
        if request.headers.get("Range"):
            start = int(request.headers["Range"].removeprefix("bytes=").split("-")[0])
            status = 206
        payload = data[start:]
        request.send_response(status)
        request.send_header("X-Repo-Commit", sha)
        request.send_header("ETag", f'"{etag}"')
        request.send_header("Content-Length", str(len(payload)))
        if status == 206:
            request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        request.end_headers()
        if method == "GET":
            request.wfile.write(payload)

    @staticmethod
    def _json(request: BaseHTTPRequestHandler, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(data)
