"""A Hub-compatible HTTP server on 127.0.0.1 for tests: the real huggingface_hub and datasets
clients talk to it through ``HF_ENDPOINT`` (with ``HF_HUB_DISABLE_XET=1``).

It answers what huggingface_hub 0.36 and datasets 5.0 call to push and load a repo:

    POST /api/repos/create                              create a repo (409 if it exists)
    GET  /api/{type}s/{repo}[/revision/{rev}]           repo info: sha, siblings, private, cardData
    POST /api/{type}s/{repo}/preupload/{rev}            upload mode per file (lfs for binaries), remote oid
    POST /{prefix}{repo}.git/info/lfs/objects/batch     LFS batch: where to PUT each new object
    PUT  /lfs/{oid}                                     the LFS upload itself (sha256 checked)
    POST /api/{type}s/{repo}/commit/{rev}               NDJSON commit: file, lfsFile, deletedFile, deletedFolder
    POST /api/{type}s/{repo}/tag/{rev}                  create a tag (409 if it exists: never moved)
    DELETE /api/{type}s/{repo}/tag/{tag}                delete a tag
    POST /api/{type}s/{repo}/branch/{name}              create a branch (409 if it exists)
    GET  /api/{type}s/{repo}/refs                       branches and tags with their commits
    GET  /api/{type}s/{repo}/commits/{rev}              commit history, newest first
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]        listing (recursive=, expand=)
    POST /api/{type}s/{repo}/paths-info/{rev}           info for given paths (form-encoded)
    HEAD/GET /{prefix}{repo}/resolve/{rev}/{path}       file bytes with X-Repo-Commit, ETag,
                                                        X-Linked-Etag/-Size for LFS, Range
    POST /api/validate-yaml                             real checks of a card's YAML metadata
    GET  /api/whoami-v2                                 the token's user

Every commit keeps the full file tree of its revision, so tags, branches and commit shas each load
their own files. Failures are injectable: ``server.fail("POST", r"/commit/", times=2)`` answers 500
to the next two matching requests without touching state.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".bin", ".safetensors", ".onnx", ".pt", ".msgpack",
                ".h5", ".model", ".zip", ".gz")
PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# what validate-yaml accepts (a subset of the Hub's lists, enough to catch typos)
LICENSES = {
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear",
    "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
    "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
    "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0",
    "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "agpl-3.0",
    "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "lppl-1.3c", "ms-pl",
    "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense",
    "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "llama3", "llama3.1", "llama3.2", "gemma",
    "apple-ascl", "unknown", "other",
}
TASK_CATEGORIES = {
    "text-classification", "token-classification", "table-question-answering", "question-answering",
    "zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation",
    "text2text-generation", "fill-mask", "sentence-similarity", "text-to-speech", "automatic-speech-recognition",
    "audio-classification", "image-classification", "object-detection", "image-segmentation",
    "text-to-image", "image-to-text", "tabular-classification", "tabular-regression", "other",
}
SIZE_CATEGORIES = {"n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M",
                   "100M<n<1B", "1B<n<10B", "10B<n<100B", "100B<n<1T", "n>1T"}
DTYPES = {"null", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "string", "large_string", "binary", "large_binary",
          "date32", "date64", "time32[s]", "timestamp[s]", "timestamp[ms]", "timestamp[us]", "timestamp[ns]"}
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
CONFIG_NAME_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Entry:
    """One file of a revision: its bytes are in the blob store under ``key``."""

    size: int
    oid: str  # git blob sha1 (of the pointer file for LFS, as on the Hub)
    lfs: str | None = None  # sha256 of the content when stored in LFS
    key: str = ""

    def info(self, path: str) -> dict:
        out = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.lfs, "size": self.size, "pointerSize": 134}
        return out


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    files: dict[str, Entry]
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if revision.startswith(prefix):
                revision = revision[len(prefix):]
                sha = refs.get(revision)
                return self.commits.get(sha) if sha else None
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha:
            return self.commits[sha]
        if re.fullmatch(r"[0-9a-f]{40}", revision):
            return self.commits.get(revision)
        return None


@dataclass
class Failure:
    method: str
    pattern: re.Pattern
    times: int
    status: int


class HubState:
    """Repos, blobs and injected failures, shared by the request handlers (under a lock)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # key -> bytes (sha256 for LFS, sha1 for regular)
        self.failures: list[Failure] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for assertions
        self.tokens: set[str] = set()  # tokens seen in Authorization headers

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def store(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self.blobs[key] = data
        return key

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, Entry], title: str,
                   message: str = "") -> Commit:
        sha = hashlib.sha1(f"{repo.repo_id}{parent}{title}{uuid.uuid4()}".encode()).hexdigest()
        commit = Commit(sha=sha, parent=parent, title=title, message=message, files=files)
        repo.commits[sha] = commit
        return commit


class HubServer:
    """``with HubServer() as hub: hub.url`` -- a Hub on a free 127.0.0.1 port, in a thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.state = HubState()
        state = self.state

        class Handler(_Handler):
            hub = state

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        Handler.base_url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers ---------------------------------------------------------------------------

    def fail(self, method: str, pattern: str, times: int = 1, status: int = 500) -> None:
        """Answer ``status`` to the next ``times`` requests whose path matches ``pattern``."""
        with self.state.lock:
            self.state.failures.append(Failure(method.upper(), re.compile(pattern), times, status))

    def clear_failures(self) -> None:
        with self.state.lock:
            self.state.failures.clear()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo | None:
        return self.state.repo(repo_type, repo_id)

    def snapshot(self, repo_id: str, repo_type: str = "dataset") -> dict:
        """Refs and commit count of a repo, to check that an operation changed nothing."""
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            return {}
        with self.state.lock:
            return {"branches": dict(repo.branches), "tags": dict(repo.tags), "commits": len(repo.commits)}

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        repo = self.repo(repo_id, repo_type)
        commit = repo.resolve(revision) if repo else None
        if commit is None:
            return {}
        return {path: self.state.blobs[e.key] for path, e in commit.files.items()}


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class _Handler(BaseHTTPRequestHandler):
    hub: HubState
    base_url: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # -- plumbing -------------------------------------------------------------------------------

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    def _body(self) -> bytes:
        if getattr(self, "_cached_body", None) is not None:
            return self._cached_body
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            data = self.rfile.read(length)
        elif "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            data = b"".join(chunks)
        else:
            data = b""
        self._cached_body = data
        return data

    def _json(self):
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        with self.hub.lock:
            self.hub.requests.append((self.command, self.path, status))

    def _handle(self, method: str) -> None:
        self._cached_body = None
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            with self.hub.lock:
                self.hub.tokens.add(auth[len("Bearer "):])
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self._token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with self.hub.lock:
            for failure in self.hub.failures:
                if failure.times > 0 and failure.method == method and failure.pattern.search(path):
                    failure.times -= 1
                    self._body()  # drain the request so the connection stays usable
                    return self._send(failure.status, {"error": "injected failure"},
                                      {"X-Error-Message": "injected failure"})
        try:
            self._route(method, path, query)
        except Exception as e:  # a bug here answers 500 instead of dropping the connection
            if not isinstance(e, _HTTPError):
                e = _HTTPError(500, f"internal error: {type(e).__name__}: {e}")
            headers = {"X-Error-Message": " ".join(e.message.split())[:500]}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._body()
            self._send(e.status, e.body or {"error": e.message}, headers, head=method == "HEAD")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.hub.repo(repo_type, repo_id)
        if repo is None or (repo.private and not self._token):  # private repos hide from anonymous users
            raise _HTTPError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HTTPError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def _route(self, method: str, path: str, query: dict) -> None:
        parts = [p for p in path.split("/") if p != ""]
        # as on the Hub: every write needs a token (LFS PUTs go to pre-signed storage URLs instead)
        writes = method in ("POST", "PUT", "DELETE") and parts[:1] != ["lfs"] and parts[:2] != ["api", "validate-yaml"]
        if writes and not self._token:
            raise _HTTPError(401, "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "whoami-v2"]:
            return self._send(200, {"type": "user", "name": "tester", "auth": {"type": "access_token"}})
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo()
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets", "spaces"):
            repo_type = parts[1][:-1]
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            return self._api(method, repo_type, repo_id, parts[4:], query)
        if method == "PUT" and parts[:1] == ["lfs"]:
            return self._lfs_put(parts[1])
        # /{prefix}{ns}/{name}.git/info/lfs/objects/batch and /{prefix}{ns}/{name}/resolve/{rev}/{path}
        repo_type = "model"
        if parts and parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) >= 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(repo_type, f"{parts[0]}/{parts[1][:-4]}")
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
            return self._resolve(method, repo_type, repo_id, parts[3], unquote("/".join(parts[4:])))
        raise _HTTPError(404, f"no route for {method} {path}")

    # -- repos ----------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        payload = self._json()
        repo_type = payload.get("type") or "model"
        name = payload.get("name")
        namespace = payload.get("organization") or "tester"
        if not name or not re.fullmatch(r"[\w.\-]{1,96}", name):
            raise _HTTPError(400, f"invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        with self.hub.lock:
            if self.hub.repo(repo_type, repo_id) is not None:
                raise _HTTPError(409, "You already created this repo", body={
                    "error": "You already created this repo", "url": f"{self.base_url}/{PREFIXES[repo_type]}{repo_id}"})
            repo = Repo(repo_id=repo_id, repo_type=repo_type, private=bool(payload.get("private")))
            gitattributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
            key = self.hub.store(gitattributes)
            files = {".gitattributes": Entry(len(gitattributes), git_blob_sha1(gitattributes), None, key)}
            commit = self.hub.new_commit(repo, None, files, "initial commit")
            repo.branches["main"] = commit.sha
            self.hub.repos[(repo_type, repo_id)] = repo
        self._send(200, {"url": f"{self.base_url}/{PREFIXES[repo_type]}{repo_id}", "name": repo_id})

    def _api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            if not rest or rest[0] == "revision":
                revision = unquote(rest[1]) if len(rest) > 1 else "main"
                return self._repo_info(repo, self._commit(repo, revision))
            action, args = rest[0], [unquote(a) for a in rest[1:]]
            if action == "refs" and method == "GET":
                return self._send(200, {
                    "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()],
                    "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()],
                    "converts": [],
                })
            if action == "preupload" and method == "POST":
                return self._preupload(repo, args[0] if args else "main")
            if action == "commit" and method == "POST":
                return self._commit_ndjson(repo, args[0] if args else "main")
            if action == "tag" and method == "POST":
                return self._create_tag(repo, args[0] if args else "main")
            if action == "tag" and method == "DELETE":
                if args[0] not in repo.tags:
                    raise _HTTPError(404, f"tag {args[0]} not found", "RevisionNotFound")
                del repo.tags[args[0]]
                return self._send(200, {})
            if action == "branch" and method == "POST":
                payload = self._json()
                if args[0] in repo.branches:
                    if payload.get("exist_ok"):
                        return self._send(200, {})
                    raise _HTTPError(409, f"Reference already exists: refs/heads/{args[0]}")
                start = self._commit(repo, payload.get("startingPoint") or "main")
                repo.branches[args[0]] = start.sha
                return self._send(200, {})
            if action == "commits" and method == "GET":
                commit = self._commit(repo, args[0] if args else "main")
                history = []
                while commit is not None:
                    history.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                                    "authors": [{"user": "tester"}], "date": commit.date})
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                return self._send(200, history)
            if action == "tree" and method == "GET":
                commit = self._commit(repo, args[0] if args else "main")
                prefix = "/".join(args[1:]).strip("/")
                recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
                return self._send(200, self._listing(repo, commit, prefix, recursive,
                                                     (query.get("expand") or ["false"])[0].lower() in ("1", "true")))
            if action == "paths-info" and method == "POST":
                commit = self._commit(repo, args[0] if args else "main")
                form = parse_qs(self._body().decode())
                expand = (form.get("expand") or ["False"])[0].lower() in ("1", "true")
                out = []
                for p in form.get("paths", []):
                    p = p.strip("/")
                    if p in commit.files:
                        out.append(self._file_info(commit, p, expand))
                    elif any(f.startswith(p + "/") for f in commit.files) or p == "":
                        out.append(self._folder_info(commit, p, expand))
                return self._send(200, out)
        raise _HTTPError(404, f"no route for {method} {self.path}")

    def _repo_info(self, repo: Repo, commit: Commit) -> None:
        card = {}
        readme = commit.files.get("README.md")
        if readme is not None:
            card = _front_matter(self.hub.blobs[readme.key].decode("utf-8", "replace"))[0] or {}
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sib = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
            if entry.lfs:
                sib["lfs"] = {"sha256": entry.lfs, "size": entry.size, "pointerSize": 134}
            siblings.append(sib)
        self._send(200, {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.sha, "lastModified": commit.date,
            "createdAt": commit.date, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "cardData": card if isinstance(card, dict) else {},
            "siblings": siblings,
        })

    def _file_info(self, commit: Commit, path: str, expand: bool) -> dict:
        info = commit.files[path].info(path)
        if expand:
            info["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        return info

    def _folder_info(self, commit: Commit, path: str, expand: bool) -> dict:
        info = {"type": "directory", "oid": hashlib.sha1(f"{commit.sha}/{path}".encode()).hexdigest(), "path": path}
        if expand:
            info["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        return info

    def _listing(self, repo: Repo, commit: Commit, prefix: str, recursive: bool, expand: bool) -> list[dict]:
        if prefix and prefix in commit.files:
            return [self._file_info(commit, prefix, expand)]
        base = prefix + "/" if prefix else ""
        under = [p for p in commit.files if p.startswith(base)]
        if prefix and not under:
            raise _HTTPError(404, f"{prefix} does not exist on {commit.sha}", "EntryNotFound")
        out, folders = [], set()
        for p in sorted(under):
            rel = p[len(base):].split("/")
            for depth in range(1, len(rel)):
                folder = base + "/".join(rel[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    out.append(self._folder_info(commit, folder, expand))
            if recursive or len(rel) == 1:
                out.append(self._file_info(commit, p, expand))
        return out

    # -- uploads --------------------------------------------------------------------------------

    def _preupload(self, repo: Repo, revision: str = "main") -> None:
        files = self._json().get("files", [])
        head = repo.resolve(revision)
        out = []
        for f in files:
            sample = base64.b64decode(f.get("sample", ""))
            binary = b"\0" in sample
            lfs = f["path"].endswith(LFS_SUFFIXES) or binary or f.get("size", 0) > 10 * 1024 * 1024
            info = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            # as the Hub: the oid of the file already there (sha256 for LFS, git sha1 for regular files),
            # which the client compares with its own to leave unchanged files out of the commit
            entry = head.files.get(f["path"].strip("/")) if head else None
            if entry is not None:
                info["oid"] = entry.lfs or entry.oid
            out.append(info)
        self._send(200, {"files": out, "commitOid": head.sha if head else None})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        with self.hub.lock:
            self._repo(repo_type, repo_id)
            payload = self._json()
            objects = []
            for obj in payload.get("objects", []):
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in self.hub.blobs:
                    entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs/{obj['oid']}?size={obj['size']}"}}
                objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HTTPError(400, f"sha256 mismatch for LFS object {oid}")
        with self.hub.lock:
            self.hub.blobs[oid] = data
        self._send(200, {})

    def _commit_ndjson(self, repo: Repo, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HTTPError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        branch = unquote(revision)
        if branch not in repo.branches:
            raise _HTTPError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        parent = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") and header["parentCommit"] != parent.sha:
            raise _HTTPError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"].strip("/")
            if key == "file":
                data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else value["content"].encode()
                files[path] = Entry(len(data), git_blob_sha1(data), None, self.hub.store(data))
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in self.hub.blobs:
                    raise _HTTPError(422, f"LFS object {oid} for {path} was never uploaded")
                data = self.hub.blobs[oid]
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()
                files[path] = Entry(len(data), git_blob_sha1(pointer), oid, oid)
            elif key == "deletedFile":
                if path not in files:
                    raise _HTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(path + "/")]:
                    del files[p]
            else:
                raise _HTTPError(400, f"unknown commit operation {key!r}")
        commit = self.hub.new_commit(repo, parent.sha, files, header.get("summary") or "update",
                                     header.get("description") or "")
        repo.branches[branch] = commit.sha
        prefix = PREFIXES[repo.repo_type]
        self._send(200, {"commitUrl": f"{self.base_url}/{prefix}{repo.repo_id}/commit/{commit.sha}",
                         "commitOid": commit.sha, "success": True})

    def _create_tag(self, repo: Repo, revision: str) -> None:
        payload = self._json()
        tag = payload.get("tag")
        if not tag or not re.fullmatch(r"[\w.\-/]+", tag):
            raise _HTTPError(400, f"invalid tag name {tag!r}")
        if tag in repo.tags:
            raise _HTTPError(409, f"Tag reference already exists: refs/tags/{tag}")
        commit = self._commit(repo, revision)
        repo.tags[tag] = commit.sha
        self._send(200, {})

    # -- downloads ------------------------------------------------------------------------------

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id)
            commit = self._commit(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                raise _HTTPError(404, f"Entry not found: {path}", "EntryNotFound")
            data = self.hub.blobs[entry.key]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.lfs}"'
            headers["X-Linked-Size"] = str(entry.size)
        status = 200
        rng = self.headers.get("Range")
        if rng and method == "GET":
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m:
                raise _HTTPError(416, f"bad range {rng}")
            start, end = m.group(1), m.group(2)
            if start == "":
                first, last = max(0, len(data) - int(end)), len(data) - 1
            else:
                first, last = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
            if first >= len(data) and len(data) > 0:
                raise _HTTPError(416, f"range {rng} outside of {len(data)} bytes")
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            data = data[first:last + 1]
            status = 206
        self._send(status, data, headers, content_type="application/octet-stream", head=method == "HEAD")

    # -- card metadata --------------------------------------------------------------------------

    def _validate_yaml(self) -> None:
        payload = self._json()
        errors, warnings = validate_card(payload.get("content", ""), payload.get("repoType") or "model")
        if errors:
            raise _HTTPError(400, "; ".join(errors), body={"errors": [{"message": e} for e in errors],
                                                          "warnings": [{"message": w} for w in warnings]})
        self._send(200, {"errors": [], "warnings": [{"message": w} for w in warnings]})


def _front_matter(content: str) -> tuple[dict | None, str | None]:
    """(metadata, error) of a card's YAML block between the leading '---' lines."""
    match = re.match(r"^\s*---\r?\n(.*?)\r?\n---\s*(\r?\n|$)", content, re.DOTALL)
    if not match:
        return None, None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        return None, f"YAML metadata is not valid YAML: {e}"
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        return None, "YAML metadata must be a mapping"
    return data, None


def _str_or_list(value, what: str, errors: list[str], allowed: set[str] | None = None,
                 pattern: re.Pattern | None = None) -> None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        errors.append(f'"{what}" must be a string or a list of strings')
        return
    for item in items:
        if allowed is not None and item not in allowed:
            errors.append(f'"{what}" has an unknown value {item!r}')
        if pattern is not None and not pattern.match(item):
            errors.append(f'"{what}" value {item!r} is not a valid code')


def _check_feature(feature, where: str, errors: list[str]) -> None:
    """One feature of dataset_info, in the forms datasets writes: dtype (a name, or class_label),
    list/sequence/large_list (of a dtype name, a feature or a struct) and struct."""
    if isinstance(feature, str):
        if feature not in DTYPES:
            errors.append(f'"{where}" has an unknown dtype {feature!r}')
        return
    if isinstance(feature, list):  # a struct: list of named features
        for f in feature:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                errors.append(f'"{where}" struct fields must have a name')
                continue
            _check_feature({k: v for k, v in f.items() if k != "name"}, f"{where}.{f['name']}", errors)
        return
    if not isinstance(feature, dict):
        errors.append(f'"{where}" must be a mapping')
        return
    if "dtype" in feature:
        dtype = feature["dtype"]
        if isinstance(dtype, dict) and "class_label" in dtype:
            names = (dtype["class_label"] or {}).get("names")
            if not isinstance(names, dict) or not names or not all(isinstance(n, str) for n in names.values()):
                errors.append(f'"{where}.class_label.names" must be a non-empty mapping of id to name')
        else:
            _check_feature(dtype, where + ".dtype", errors)
    elif "class_label" in feature:
        _check_feature({"dtype": {"class_label": feature["class_label"]}}, where, errors)
    elif any(k in feature for k in ("list", "sequence", "large_list")):
        inner = feature.get("list", feature.get("sequence", feature.get("large_list")))
        _check_feature(inner, where + ".list", errors)
    elif "struct" in feature:
        _check_feature(feature["struct"], where + ".struct", errors)
    else:
        errors.append(f'"{where}" has no dtype, class_label, list or struct')


def validate_card(content: str, repo_type: str) -> tuple[list[str], list[str]]:
    """The Hub's metadata checks that matter for hfaug's cards; (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    data, error = _front_matter(content)
    if error:
        return [error], warnings
    if data is None or not data:
        return errors, ["Empty or missing yaml metadata in repo card"]
    if "license" in data:
        _str_or_list(data["license"], "license", errors, LICENSES)
        if data["license"] == "other" and not data.get("license_name"):
            warnings.append('license "other" should come with license_name and license_link')
    if "language" in data:
        _str_or_list(data["language"], "language", errors, pattern=LANG_RE)
    if "tags" in data:
        _str_or_list(data["tags"], "tags", errors)
    if "pretty_name" in data and not isinstance(data["pretty_name"], str):
        errors.append('"pretty_name" must be a string')
    if repo_type == "dataset":
        if "task_categories" in data:
            _str_or_list(data["task_categories"], "task_categories", errors, TASK_CATEGORIES)
        if "task_ids" in data:
            _str_or_list(data["task_ids"], "task_ids", errors, pattern=re.compile(r"^[a-z0-9\-]+$"))
        if "size_categories" in data:
            _str_or_list(data["size_categories"], "size_categories", errors, SIZE_CATEGORIES)
        configs = data.get("configs")
        names = []
        if configs is not None:
            if not isinstance(configs, list):
                errors.append('"configs" must be a list')
                configs = []
            for i, cfg in enumerate(configs):
                if not isinstance(cfg, dict) or not isinstance(cfg.get("config_name"), str):
                    errors.append(f'"configs[{i}].config_name" must be a string')
                    continue
                name = cfg["config_name"]
                if not CONFIG_NAME_RE.match(name):
                    errors.append(f'"configs[{i}].config_name" {name!r} is not a valid name')
                names.append(name)
                files = cfg.get("data_files")
                if files is not None:
                    if isinstance(files, str):
                        pass
                    elif isinstance(files, list):
                        for j, item in enumerate(files):
                            ok = isinstance(item, str) or (
                                isinstance(item, dict) and isinstance(item.get("split"), str)
                                and isinstance(item.get("path"), (str, list)))
                            if not ok:
                                errors.append(f'"configs[{i}].data_files[{j}]" must be a path or a mapping with split and path')
                    else:
                        errors.append(f'"configs[{i}].data_files" must be a string or a list')
                if "default" in cfg and not isinstance(cfg["default"], bool):
                    errors.append(f'"configs[{i}].default" must be a boolean')
            if len(set(names)) != len(names):
                errors.append('"configs" has duplicate config_name values')
            if sum(1 for c in configs if isinstance(c, dict) and c.get("default")) > 1:
                errors.append('"configs" has more than one default config')
        infos = data.get("dataset_info")
        if infos is not None:
            infos = infos if isinstance(infos, list) else [infos]
            for i, info in enumerate(infos):
                if not isinstance(info, dict):
                    errors.append(f'"dataset_info[{i}]" must be a mapping')
                    continue
                if names and len(infos) > 1 and info.get("config_name") not in names:
                    errors.append(f'"dataset_info[{i}].config_name" {info.get("config_name")!r} is not in configs')
                for j, feat in enumerate(info.get("features") or []):
                    if not isinstance(feat, dict) or not isinstance(feat.get("name"), str):
                        errors.append(f'"dataset_info[{i}].features[{j}].name" must be a string')
                        continue
                    _check_feature({k: v for k, v in feat.items() if k != "name"}, f"dataset_info[{i}].features.{feat['name']}", errors)
                for j, split in enumerate(info.get("splits") or []):
                    if not isinstance(split, dict) or not isinstance(split.get("name"), str) or not isinstance(split.get("num_examples", 0), int):
                        errors.append(f'"dataset_info[{i}].splits[{j}]" must have a name and an integer num_examples')
    else:
        if "base_model" in data:
            _str_or_list(data["base_model"], "base_model", errors)
        if "datasets" in data:
            _str_or_list(data["datasets"], "datasets", errors)
        if "pipeline_tag" in data and data["pipeline_tag"] not in TASK_CATEGORIES:
            errors.append(f'"pipeline_tag" has an unknown value {data["pipeline_tag"]!r}')
        if "library_name" in data and not isinstance(data["library_name"], str):
            errors.append('"library_name" must be a string')
        for i, index in enumerate(data.get("model-index") or []):
            if not isinstance(index, dict) or not isinstance(index.get("name"), str) or not isinstance(index.get("results"), list):
                errors.append(f'"model-index[{i}]" must have a name and a list of results')
    return errors, warnings


if __name__ == "__main__":  # python tests/hub_server.py: a Hub to poke at by hand
    server = HubServer(port=0).start()
    print(f"HF_ENDPOINT={server.url} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
