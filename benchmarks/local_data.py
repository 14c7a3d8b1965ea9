"""What the local stack's kept data costs per 1,000 images: memory, disk, stop and start time.

Run: .venv/bin/python -m benchmarks.local_data [--images 1000] [--image-kb 200]
Starts the local endpoint with a data folder (as `make run` does), puts the images and one
done result each, reads the endpoint's memory, stops it (it saves), measures the folder, and
starts it again (it restores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench import _proc_status
from benchmarks.table_size import fill
from imagepipe.core.aws import make_clients
from imagepipe.core.provision import provision
from imagepipe.core.settings import Settings
from imagepipe.local.stack import free_port, local_environ, start_moto, stop_processes


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.local_data", description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image-kb", type=int, default=200,
                        help="size of each image (default 200 KB, a downsized photo)")
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="imagepipe-local-data-"))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    environ = local_environ(endpoint)
    os.environ.update({k: v for k, v in environ.items() if k.startswith("AWS_")})
    settings = Settings.from_env(environ, endpoint_url=endpoint, bucket="data-images",
                                 queue="data-events", dead_letter_queue="data-events-dlq",
                                 table="data-results")
    try:
        moto = start_moto("127.0.0.1", port, environ, data)
        clients = make_clients(settings)
        provision(settings, clients)
        empty = _proc_status(moto.pid, "VmRSS")
        body = os.urandom(args.image_kb * 1024)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda n: clients.s3.put_object(
                Bucket=settings.bucket, Key=f"users/someone/{n}.jpg", Body=body),
                range(args.images)))
        fill(clients, settings.table, settings.bucket, "someone", 0, args.images)
        full = _proc_status(moto.pid, "VmRSS")
        started = time.perf_counter()
        stop_processes(moto, timeout=300)
        saved = time.perf_counter() - started
        disk = _folder_mb(data)
        snapshot = (data / "snapshot.pickle").stat().st_size / 2**20
        started = time.perf_counter()
        moto = start_moto("127.0.0.1", port, environ, data)
        restored = time.perf_counter() - started
        kept = len(clients.s3.list_objects_v2(Bucket=settings.bucket)["Contents"])
        stop_processes(moto, timeout=300)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    per = 1000 / args.images
    print(f"{args.images} images of {args.image_kb} KB with their results: endpoint memory "
          f"{empty:.0f} -> {full:.0f} MiB (+{(full - empty) * per:.0f} MiB per 1,000); disk "
          f"{disk * per:.0f} MiB per 1,000 ({snapshot * per:.1f} MiB of it the snapshot); "
          f"stop with save {saved:.1f} s, start with restore {restored:.1f} s; "
          f"{kept} objects listed after the restart (first page)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
