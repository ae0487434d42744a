"""Images from the local builder's storage into a node's containerd, layer by layer: only what
containerd does not hold yet crosses over.

buildah pushes the image into a scratch `dir:` folder in which every blob containerd has
already appears as a hard link to containerd's own copy, so buildah writes only the new blobs
(after a source change: a few megabytes, not the 5 GB torch layer underneath). An OCI archive
of the manifest, the config and the new layers goes to `ctr images import` through a pipe;
containerd finds the rest in its store.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from alpaca_dev.images import (
    Buildah,
    BuiltImage,
    Cache,
    cache_root,
    exclusive,
    log,
    run,
    timed,
)

CONTENT = Path("io.containerd.content.v1.content") / "blobs" / "sha256"
IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def _link_known_blobs(content: Path, folder: Path) -> set[str]:
    """Hard links to containerd's blobs in the folder; the digests (hex) containerd has."""
    known = set()
    if content.is_dir():
        for blob in content.iterdir():
            known.add(blob.name)
            with contextlib.suppress(OSError):  # another filesystem: buildah writes it, fine
                os.link(blob, folder / blob.name)
    return known


def _stream(folder: Path, ref: str, known: set[str], sink: IO[bytes]) -> int:
    """Write the OCI archive of the image pushed into `folder` to `sink`; the bytes of layers
    sent (those containerd does not have)."""
    manifest_bytes = (folder / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    manifest_hex = hashlib.sha256(manifest_bytes).hexdigest()
    entry = {
        "mediaType": manifest["mediaType"],
        "digest": f"sha256:{manifest_hex}",
        "size": len(manifest_bytes),
        "annotations": {IMAGE_NAME: ref, REF_NAME: ref},
    }
    members = [
        ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
        ("index.json", json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()),
        (f"blobs/sha256/{manifest_hex}", manifest_bytes),
    ]
    sent = 0
    with tarfile.open(fileobj=sink, mode="w|") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        blobs = [manifest["config"]["digest"]]
        for layer in manifest["layers"]:
            if layer["digest"].removeprefix("sha256:") not in known:
                blobs.append(layer["digest"])
                sent += int(layer["size"])
        for digest in blobs:
            hex_ = digest.removeprefix("sha256:")
            tar.add(folder / hex_, arcname=f"blobs/sha256/{hex_}")
    return sent


def import_into_containerd(
    ctr: Path,
    address: str,
    images: Iterable[BuiltImage],
    containerd_root: Path,
    namespace: str = "k8s.io",
    cache: Path | None = None,
) -> list[str]:
    """Import each image this containerd does not hold yet (its store outlives a node: usually
    none, or the few a source change made new); the refs imported."""
    base = [str(ctr), "--address", address, "--namespace", namespace, "images"]
    present = set(run([*base, "ls", "--quiet"]).split())
    missing = [image for image in images if image.ref not in present]
    if not missing:
        return []
    store = Cache(cache or cache_root())
    buildah = Buildah(store)
    with exclusive(store):
        for image in missing:
            folder = store.tmp / f"{image.name}-blobs"
            folder.mkdir(parents=True)
            try:
                with timed(f"{image.name}: import into containerd"):
                    known = _link_known_blobs(containerd_root / CONTENT, folder)
                    buildah.push_dir(image.stored, folder)
                    importer = subprocess.Popen([*base, "import", "-"], stdin=subprocess.PIPE)
                    assert importer.stdin is not None
                    with importer.stdin:
                        sent = _stream(folder, image.ref, known, importer.stdin)
                    if importer.wait() != 0:
                        raise RuntimeError(f"ctr images import of {image.ref} failed")
                    log(f"{image.name}: {sent / 2**20:.1f} MiB of new layers sent")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return [image.ref for image in missing]
