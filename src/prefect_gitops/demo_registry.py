"""A local OCI registry for `prefect-gitops demo` and the image scan's tests: Debian's docker-registry
(the CNCF distribution registry) started on a free 127.0.0.1 port, and tiny made-up images (one config
blob, one layer) pushed into it through the OCI distribution API with httpx. Nothing here is used by
a reconcile: it only gives the demo a registry to scan."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Self

import httpx

from prefect_gitops.local_server import free_port

BINARY = "docker-registry"  # Debian's package of the same name: /usr/bin/docker-registry
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def binary() -> str | None:
    """The docker-registry executable, or None when it is not installed."""
    found = shutil.which(BINARY)
    if found:
        return found
    return "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None


class LocalRegistry:
    """docker-registry serving `root/data` on 127.0.0.1; anonymous, or htpasswd (basic) auth when
    `htpasswd` (the file's text) and `auth` (user, password) are given. Use as a context manager or
    start()/stop()."""

    def __init__(self, root: Path, *, htpasswd: str | None = None, auth: tuple[str, str] | None = None):
        self.root, self.port = root, free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.htpasswd, self.auth = htpasswd, auth
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 20) -> Self:
        executable = binary()
        if executable is None:
            raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
        self.root.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.root / "data")}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
        }
        if self.htpasswd is not None:
            (self.root / "htpasswd").write_text(self.htpasswd)
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(self.root / "htpasswd")}}
        (self.root / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
        self._log = open(self.root / "registry.log", "wb")
        self.process = subprocess.Popen([executable, "serve", str(self.root / "config.yml")], stdout=self._log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401):  # 401: auth is on
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start: " + (self.root / "registry.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def push(self, repository: str, *tags: str, distinct: bool = True) -> dict[str, str]:
        """Push a tiny image under each tag, a different one per tag (`distinct`) or one image under
        every tag; returns tag -> manifest digest."""
        digests: dict[str, str] = {}
        manifest = b""
        with httpx.Client(base_url=self.url, auth=self.auth, timeout=10) as http:
            for tag in tags:
                if distinct or not manifest:
                    manifest = _upload_image(http, repository, tag)
                done = http.put(f"/v2/{repository}/manifests/{tag}", content=manifest,
                                headers={"Content-Type": MANIFEST_TYPE})
                _expect(done, 201)
                digests[tag] = done.headers["Docker-Content-Digest"]
                if digests[tag] != "sha256:" + hashlib.sha256(manifest).hexdigest():
                    raise RuntimeError(f"{repository}:{tag}: the registry gave digest {digests[tag]} for the manifest")
        return digests


def _upload_image(http: httpx.Client, repository: str, tag: str) -> bytes:
    """Upload a config blob and a layer blob that differ per tag; the manifest naming them."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                         "config": {"Labels": {"tag": tag}}, "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = f"layer of {tag}".encode()
    config_digest, layer_digest = (_upload_blob(http, repository, b) for b in (config, layer))
    return json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}]}).encode()


def _upload_blob(http: httpx.Client, repository: str, data: bytes) -> str:
    """A monolithic upload: POST to start it, PUT the bytes with their digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    started = http.post(f"/v2/{repository}/blobs/uploads/")
    _expect(started, 202)
    location = started.headers["Location"]
    location += ("&" if "?" in location else "?") + f"digest={digest}"  # keeps the upload's _state
    _expect(http.put(location, content=data, headers={"Content-Type": "application/octet-stream"}), 201)
    return digest


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"(expected {status}): {response.text[:500]}")
