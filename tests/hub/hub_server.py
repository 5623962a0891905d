"""A small Hub-compatible HTTP server for tests: the endpoints `huggingface_hub` really calls.

It implements, on loopback only, what `create_repo`, `repo_info`, `upload_folder` (preupload, the
git-LFS batch/upload/verify protocol, the NDJSON commit), `list_repo_tree` and `hf_hub_download`
(HEAD/GET `resolve` with `X-Repo-Commit`, `ETag`, `Content-Length`, ranges) use, for model and
dataset repos. State lives in a folder (`--root`) so that a server killed and started again on the
same port sees the same repos, like the real Hub after a dropped connection.

Run it alone with ``python tests/hub/hub_server.py --root DIR [--port N] [--exit-on REGEX]``: it
prints ``PORT <n>`` once listening. ``--exit-on`` makes the process die (``os._exit``) as soon
as a request line ``METHOD /path`` matches, before answering: a server killed mid-push.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

# Files the Hub stores in LFS by default (its default .gitattributes), plus anything binary or big.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".parquet", ".arrow", ".png", ".jpg", ".npy", ".gz", ".zip")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TYPE_OF_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    """Repos, commits and blobs, persisted as JSON + content-addressed files under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        state_file = self.root / "state.json"
        self.repos = json.loads(state_file.read_text()) if state_file.exists() else {}

    def save(self) -> None:
        tmp = self.root / "state.json.tmp"
        tmp.write_text(json.dumps(self.repos))
        os.replace(tmp, self.root / "state.json")

    @staticmethod
    def key(repo_type: str, repo_id: str) -> str:
        return f"{repo_type}:{repo_id}"

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def resolve(self, repo: dict, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in repo["refs"]:
            return repo["refs"][revision]
        return revision if revision in repo["commits"] else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hf-ilp-test-hub/1"
    state: HubState
    exit_on: re.Pattern | None = None

    # plumbing -----------------------------------------------------------------------------------
    def log_message(self, format, *args):  # quiet: tests read results, not access logs
        pass

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send(self, status: int, payload=None, headers: dict | None = None, head_only: bool = False) -> None:
        if isinstance(payload, (bytes, bytearray)):
            body, ctype = bytes(payload), "application/octet-stream"
        elif payload is None:
            body, ctype = b"", "text/plain"
        else:
            body, ctype = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None, head_only: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers, head_only=head_only)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if self.exit_on is not None and self.exit_on.search(f"{method} {path}"):
            os._exit(17)  # killed mid-request: the client sees the connection drop
        for pattern, handler in _ROUTES:
            if pattern[0] != method:
                continue
            m = re.fullmatch(pattern[1], path)
            if m:
                try:
                    with self.state.lock:
                        return handler(self, query=query, **m.groupdict())
                except Exception as exc:  # a server bug must show up as a 500, not a hang
                    return self._error(500, f"{type(exc).__name__}: {exc}", head_only=method == "HEAD")
        self._error(404, f"no route for {method} {path}", head_only=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    # helpers ------------------------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str, head_only: bool = False) -> dict | None:
        repo = self.state.repos.get(HubState.key(repo_type, repo_id))
        if repo is None:
            self._error(404, f"Repository not found: {repo_type} {repo_id}", code="RepoNotFound", head_only=head_only)
        return repo

    def _tree(self, repo: dict, commit: str | None) -> dict:
        return repo["commits"][commit]["files"] if commit else {}

    def _file_entry(self, path: str, f: dict) -> dict:
        entry = {"type": "file", "path": path, "size": f["size"], "oid": f["oid"]}
        if f["lfs"]:
            entry["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": 134}
        return entry

    # endpoints ----------------------------------------------------------------------------------
    def create_repo(self, query):
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        name, org = body.get("name"), body.get("organization")
        if not name or not re.fullmatch(r"[\w.\-]+", name):
            return self._error(400, f"invalid repo name {name!r}")
        repo_id = f"{org}/{name}" if org else name
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}"
        key = HubState.key(repo_type, repo_id)
        if key in self.state.repos:
            message = "You already created this repo"
            return self._send(409, {"error": message, "url": url}, headers={"X-Error-Message": message})
        self.state.repos[key] = {
            "id": repo_id,
            "type": repo_type,
            "private": body.get("visibility") == "private",
            "refs": {"main": None},
            "commits": {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        self.state.save()
        self._send(200, {"url": url, "name": repo_id})

    def repo_info(self, query, plural, repo_id, revision="main"):
        repo = self._repo(_TYPE_OF_PLURAL[plural], repo_id)
        if repo is None:
            return
        commit = self.state.resolve(repo, revision or "main")
        if commit is None and revision not in (None, "main"):
            return self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        files = self._tree(repo, commit)
        self._send(
            200,
            {
                "id": repo["id"],
                "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24],
                "author": repo["id"].split("/")[0],
                "sha": commit,
                "private": repo["private"],
                "lastModified": repo["created"],
                "createdAt": repo["created"],
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(files)],
            },
        )

    def tree(self, query, plural, repo_id, revision, subpath=None):
        subpath = subpath or ""
        repo = self._repo(_TYPE_OF_PLURAL[plural], repo_id)
        if repo is None:
            return
        commit = self.state.resolve(repo, revision)
        if commit is None and repo["refs"].get(unquote(revision), "") is not None:
            return self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = (subpath.strip("/") + "/") if subpath.strip("/") else ""
        entries, folders = [], set()
        for path, f in sorted(self._tree(repo, commit).items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(len(parts)):
                    folders.add(prefix + "/".join(parts[: i + 1]))
            entries.append(self._file_entry(path, f))
        entries += [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0} for d in sorted(folders)]
        self._send(200, entries)

    def validate_yaml(self, query):
        import yaml

        content = json.loads(self._body() or b"{}").get("content", "")
        m = re.match(r"^---\n(.*?)\n---", content, flags=re.S)
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as exc:
                return self._send(400, {"errors": [{"message": f"YAML parse error: {exc}"}]})
            if meta is not None and not isinstance(meta, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, query, plural, repo_id, revision):
        repo = self._repo(_TYPE_OF_PLURAL[plural], repo_id)
        if repo is None:
            return
        files = self._tree(repo, self.state.resolve(repo, revision))
        out = []
        for f in json.loads(self._body())["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(_LFS_SUFFIXES) or f["size"] >= _LFS_MIN_SIZE or b"\0" in sample
            existing = files.get(f["path"])
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["oid"]
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": out, "commitOid": repo["refs"].get("main")})

    def lfs_batch(self, query, prefix, repo_id):
        repo_type = _TYPE_OF_PLURAL[prefix.rstrip("/")] if prefix else "model"
        if self._repo(repo_type, repo_id) is None:
            return
        body = json.loads(self._body())
        objects = []
        for obj in body["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.state.blob_path(obj["oid"]).exists():
                item["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-objects/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/lfs-verify", "header": {}},
                }
            objects.append(item)
        self._send(200, {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, query, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, f"content does not match sha256 {oid}")
        self.state.put_blob(data)
        self._send(200)

    def lfs_verify(self, query):
        body = json.loads(self._body())
        path = self.state.blob_path(body["oid"])
        if not path.exists() or path.stat().st_size != body["size"]:
            return self._error(404, f"LFS object {body['oid']} not found")
        self._send(200, {"success": True})

    def commit(self, query, plural, repo_id, revision):
        repo_type = _TYPE_OF_PLURAL[plural]
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            return self._error(400, "commit payload must be application/x-ndjson")
        branch = unquote(revision)
        if branch not in repo["refs"]:
            return self._error(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        parent = repo["refs"][branch]
        files = dict(self._tree(repo, parent))
        header = None
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
                if value.get("parentCommit") not in (None, parent):
                    return self._error(412, "parent commit is not the head of the branch")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self._error(400, f"unsupported encoding {value.get('encoding')!r}")
                data = base64.b64decode(value["content"])
                sha = self.state.put_blob(data)
                files[value["path"]] = {"sha256": sha, "size": len(data), "oid": _git_blob_oid(data), "lfs": False}
            elif key == "lfsFile":
                path = self.state.blob_path(value["oid"])
                if not path.exists():
                    return self._error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                size = path.stat().st_size
                files[value["path"]] = {"sha256": value["oid"], "size": size, "oid": value["oid"], "lfs": True}
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return self._error(404, "A file with this name doesn't exist")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            else:
                return self._error(400, f"unknown commit operation {key!r}")
        if header is None:
            return self._error(400, "commit payload lacks its header line")
        oid = hashlib.sha1(json.dumps([parent, header, sorted(files.items())], sort_keys=True).encode() + os.urandom(8)).hexdigest()
        repo["commits"][oid] = {"parent": parent, "summary": header.get("summary", ""), "files": files}
        repo["refs"][branch] = oid
        self.state.save()
        url = f"{self.endpoint}/{_PREFIX[repo_type]}{repo_id}/commit/{oid}"
        self._send(200, {"success": True, "commitOid": oid, "commitUrl": url, "pullRequestUrl": None})

    def resolve_file(self, query, prefix, repo_id, revision, filename, head_only=False):
        repo_type = _TYPE_OF_PLURAL[prefix.rstrip("/")] if prefix else "model"
        repo = self._repo(repo_type, repo_id, head_only=head_only)
        if repo is None:
            return
        commit = self.state.resolve(repo, revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound", head_only=head_only)
        f = self._tree(repo, commit).get(filename)
        if f is None:
            return self._error(404, f"Entry not found: {filename}", code="EntryNotFound", head_only=head_only)
        etag = f["sha256"] if f["lfs"] else f["oid"]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if f["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(f["size"])})
        data = b"" if head_only else self.state.blob_path(f["sha256"]).read_bytes()
        status, rng = 200, self.headers.get("Range")
        if rng and not head_only:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start, end = int(m.group(1)), int(m.group(2) or len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start : end + 1], 206
        if head_only:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(f["size"]))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            return
        self._send(status, data, headers=headers)

    def resolve_head(self, query, **kw):
        self.resolve_file(query, head_only=True, **kw)


_REPO = r"(?P<repo_id>[\w.\-]+(?:/[\w.\-]+)?)"
_ROUTES = [
    (("POST", r"/api/repos/create"), Handler.create_repo),
    (("POST", r"/api/validate-yaml"), Handler.validate_yaml),
    (("GET", rf"/api/(?P<plural>models|datasets|spaces)/{_REPO}"), Handler.repo_info),
    (("GET", rf"/api/(?P<plural>models|datasets|spaces)/{_REPO}/revision/(?P<revision>[^/]+)"), Handler.repo_info),
    (("GET", rf"/api/(?P<plural>models|datasets|spaces)/{_REPO}/tree/(?P<revision>[^/]+)(?P<subpath>/.*)?"), Handler.tree),
    (("POST", rf"/api/(?P<plural>models|datasets|spaces)/{_REPO}/preupload/(?P<revision>[^/]+)"), Handler.preupload),
    (("POST", rf"/api/(?P<plural>models|datasets|spaces)/{_REPO}/commit/(?P<revision>[^/]+)"), Handler.commit),
    (("POST", rf"/(?P<prefix>datasets/|spaces/)?{_REPO}\.git/info/lfs/objects/batch"), Handler.lfs_batch),
    (("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})"), Handler.lfs_put),
    (("POST", r"/lfs-verify"), Handler.lfs_verify),
    (("GET", rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)"), Handler.resolve_file),
    (("HEAD", rf"/(?P<prefix>datasets/|spaces/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)"), Handler.resolve_head),
]


def make_server(root, port: int = 0, exit_on: str | None = None) -> ThreadingHTTPServer:
    """A server bound to 127.0.0.1 (`port=0`: a free one), serving the repos stored under `root`."""
    handler = type("BoundHandler", (Handler,), {"state": HubState(root), "exit_on": re.compile(exit_on) if exit_on else None})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


@dataclass
class HubServer:
    """A running test Hub: `endpoint` to pass to `HfApi(endpoint=...)`, its process and storage."""

    endpoint: str
    port: int
    root: Path
    process: subprocess.Popen

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def start_hub_server(root, port: int = 0, exit_on: str | None = None, timeout: float = 20.0) -> HubServer:
    """Start `hub_server.py` on 127.0.0.1 and wait until it listens."""
    cmd = [sys.executable, str(Path(__file__)), "--root", str(root), "--port", str(port)]
    if exit_on:
        cmd += ["--exit-on", exit_on]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"PORT (\d+)", line)
        if m:
            port = int(m.group(1))
            return HubServer(f"http://127.0.0.1:{port}", port, Path(root), proc)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"test Hub server did not start: {line!r}")


def point_client_at(monkeypatch, endpoint: str) -> None:
    """Make this process's huggingface_hub talk to `endpoint`, as `HF_ENDPOINT` would at import."""
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    # the shared client behind the module-level functions (`huggingface_hub.create_repo`, ...)
    # took its endpoint at import
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding the repos (created if absent)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--exit-on", default=None, help="die before answering a request matching this regex")
    args = parser.parse_args(argv)
    server = make_server(args.root, args.port, args.exit_on)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
