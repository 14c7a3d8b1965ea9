"""`make bench`: the processor's throughput against its own stages, measured in one run.

Everything is measured on this machine in the same run, so the ratios hold even where the
absolute numbers move with the load of the machine: each stage alone (the model on ready
tensors per engine, decoding the image mix full, draft (as served before), as by default
(progressive JPEGs partially), DC-only and by libvips, per kind, and the partial and libvips
decodes' top-1 agreement with the draft one, S3 reads from the local endpoint), then the
processor end to end against moto's server (from a full queue to the last result), as by
default and once without partial decoding, a naive one-image-at-a-time baseline,
single-upload latency, and one against two processor processes; then the two lanes: bulk
throughput with the interactive lane against one queue, and an upload's latency under a bulk
backlog with each. It ends with one JSON line, also appended to ``bench-results.jsonl``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagepipe.core.catalog import DEFAULT_CACHE_DIR, ENGINE_LITERT, model_cache_dir
from imagepipe.core.s3events import S3Object, object_created_body

logger = logging.getLogger(__name__)

MODEL = "efficientnet_lite0"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
TEST_PHOTOS = ("chelsea", "coffee", "rocket")
PHONE_PIXELS = 12_000_000
WEB_PIXELS = 1_500_000
# How many distinct objects the queue's messages point at (moto keeps them in memory).
POOL_KINDS = (["12mp-baseline"] * 16 + ["12mp-progressive"] * 8 + ["web-jpeg"] * 6
              + ["web-png"] * 5 + ["web-webp"] * 5)
# Keep moto's queue short: for every message it hands out, moto recomputes the queue's
# attributes over all its messages, so a receive costs O(backlog) of the endpoint's CPU.
BACKLOG = 40
MAX_PIXELS = 100_000_000
RESULTS_FILE = Path("bench-results.jsonl")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One object of the image mix."""

    kind: str
    photo: str
    key: str
    data: bytes


def _scaled(photo: np.ndarray, pixels: int, offset: int) -> Image.Image:
    # A slightly different crop per variant, so no two objects are the same bytes.
    h, w = photo.shape[:2]
    image = Image.fromarray(photo[offset % 7:, offset % 5:])
    scale = (pixels / (w * h)) ** 0.5
    return image.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def phone_jpeg(photo: np.ndarray, rng: np.random.Generator, progressive: bool,
               offset: int = 0, rotated: bool = False) -> bytes:
    """A 12-MP phone-style JPEG of ``photo``: upscaled, sensor-like noise, maybe EXIF-rotated."""
    image = _scaled(photo, PHONE_PIXELS, offset)
    pixels = np.asarray(image, dtype=np.int16)
    # Upscaling alone leaves smooth areas that compress and decode unrealistically fast.
    noise = rng.normal(0, 5.0, (256, 256, 3)).astype(np.int16)
    reps = (-(-pixels.shape[0] // 256), -(-pixels.shape[1] // 256), 1)
    pixels += np.tile(noise, reps)[: pixels.shape[0], : pixels.shape[1]]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    if rotated:
        exif[0x0112] = 6  # phones store portrait shots landscape with "rotate 90"
        image = image.transpose(Image.Transpose.ROTATE_90)
    return _encode(image, "JPEG", quality=90, progressive=progressive, exif=exif.tobytes())


def make_mix(seed: int = 0) -> list[Sample]:
    """The fixed image mix: 12-MP phone JPEGs (baseline and progressive), 1.5-MP web images."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = {name: getattr(data, name)() for name in PHOTOS}
    samples = []
    for i, kind in enumerate(POOL_KINDS):
        name = PHOTOS[i % len(PHOTOS)]
        photo = photos[name]
        if kind.startswith("12mp"):
            body = phone_jpeg(photo, rng, kind.endswith("progressive"), offset=i,
                              rotated=i % 2 == 1)
            ext = "jpg"
        else:
            image = _scaled(photo, WEB_PIXELS, i)
            fmt, ext, options = {
                "web-jpeg": ("JPEG", "jpg", {"quality": 85}),
                "web-png": ("PNG", "png", {}),
                "web-webp": ("WEBP", "webp", {"quality": 80}),
            }[kind]
            body = _encode(image, fmt, **options)
        samples.append(Sample(kind, name, f"bench/{i:02d}-{kind}-{name}.{ext}", body))
    return samples


def _rate(run: Callable[[], int], seconds: float) -> dict[str, float]:
    """Images per second and CPU-seconds per image of ``run`` (returns images) repeated."""
    run()  # warm up: first calls allocate and trace
    images, wall, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - wall < seconds:
        images += run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"ips": images / wall, "cpu_s_per_image": cpu / images}


def model_ceilings(keras_model: Any, tflite: Path, size: int, seconds: float
                   ) -> dict[str, dict[str, float]]:
    """The bare model on ready tensors, per engine (and LiteRT thread counts and batch)."""
    from processor.engine import KerasEngine, LiteRTEngine, default_threads, export_litert

    batch = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    keras_engine = KerasEngine(keras_model, size)
    out = {
        "keras_predict_b32": _rate(
            lambda: len(keras_model.predict(batch, batch_size=32, verbose=0)), seconds),
        "keras_predict_b1": _rate(
            lambda: len(keras_model.predict(batch[:1], verbose=0)), seconds / 2),
        "tf_function_b16": _rate(lambda: len(keras_engine.predict(batch[:16])), seconds),
    }
    for threads in sorted({1, default_threads()}):
        engine = LiteRTEngine(tflite, threads)
        out[f"litert_b1_t{threads}"] = _rate(lambda e=engine: len(e.predict(batch[:8])), seconds)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b8.tflite"
        export_litert(keras_model, path, size, batch=8)
        engine = LiteRTEngine(path)
        out[f"litert_b8_t{engine.threads}"] = _rate(lambda: len(engine.predict(batch[:8])),
                                                    seconds)
    return out


def decode_ceiling(samples: Sequence[Sample], size: int, way: str, threads: int,
                   passes: int = 2) -> dict[str, float]:
    """Decode (one of DECODES) and preprocess the mix alone, on ``threads`` threads (Pillow
    and libvips release the GIL)."""
    from processor.decode import decode_image
    from processor.model import preprocess_image
    from processor.worker import min_decode_side

    def one(sample: Sample) -> None:
        decoded = decode_image(sample.data, MAX_PIXELS, min_side=min_decode_side(size),
                               **DECODES[way])
        preprocess_image(decoded.image, size)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, samples[:threads]))
        wall, cpu = time.perf_counter(), time.process_time()
        list(pool.map(one, list(samples) * passes))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(samples) * passes
    return {"ips": n / wall, "cpu_s_per_image": cpu / n}


# The ways of decoding the benchmark compares: decode_image's switches. "draft" is what the
# processor served before partial decoding; "default" what it does now (IMAGEPIPE_PARTIAL_DECODE:
# progressive JPEGs from their DC scans); "dc" and "vips" add the settings that are off
# (IMAGEPIPE_PARTIAL_DECODE_DC; IMAGEPIPE_VIPS_DECODE: PNG by libvips, large WebPs shrunk).
DECODES: dict[str, dict[str, bool]] = {
    "full": {"draft": False}, "draft": {"draft": True},
    "default": {"draft": True, "partial": True},
    "dc": {"draft": True, "partial": True, "dc_only": True},
    "vips": {"draft": True, "partial": True, "vips_formats": True}}


def decode_per_format(samples: Sequence[Sample], size: int, passes: int = 3
                      ) -> dict[str, dict[str, float]]:
    """CPU-ms of decode + preprocess per image of each kind, one thread, each way of decoding.

    process_time counts every thread of the process (libvips' too); the median of the passes
    over each kind's objects, so a burst of the machine's other work moves it less.
    """
    from processor.decode import decode_image
    from processor.model import preprocess_image
    from processor.worker import min_decode_side

    by_kind: dict[str, list[Sample]] = {}
    for sample in samples:
        by_kind.setdefault(sample.kind, []).append(sample)
    out: dict[str, dict[str, float]] = {}
    for kind, group in by_kind.items():
        out[kind] = {}
        for way, switches in DECODES.items():
            times = []
            for _ in range(passes):
                for sample in group[:4]:
                    cpu = time.process_time()
                    decoded = decode_image(sample.data, MAX_PIXELS, min_side=min_decode_side(size),
                                           **switches)
                    preprocess_image(decoded.image, size)
                    times.append(time.process_time() - cpu)
            out[kind][way] = statistics.median(times) * 1000
    return out


def extra_samples(seed: int = 3) -> list[Sample]:
    """Kinds outside the mix that the per-format table shows: 12-MP WebPs and 12-MP PNGs."""
    from skimage import data

    rng = np.random.default_rng(seed)
    photo = data.astronaut()
    out = []
    for i in range(2):
        pixels = np.asarray(_scaled(photo, PHONE_PIXELS, i), dtype=np.int16)
        pixels += rng.normal(0, 5.0, pixels.shape).astype(np.int16)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        out.append(Sample("12mp-webp", "astronaut", f"extra/{i}.webp",
                          _encode(image, "WEBP", quality=80)))
        out.append(Sample("12mp-png", "astronaut", f"extra/{i}.png",
                          _encode(image, "PNG", compress_level=1)))
    return out


# Megapixels of the agreement set's images per format: progressive JPEGs mostly large enough for
# the 1/8 scale; WebPs from web images to phone photos, most large enough for libvips' shrink.
AGREEMENT_MEGAPIXELS = {"progressive": (6, 16), "webp": (0.6, 16), "png": (0.6, 6)}


def agreement_images(count: int, seed: int,
                     formats: Sequence[str] = ("progressive", "progressive", "webp", "png")
                     ) -> list[tuple[str, bytes]]:
    """Varied objects the partial and vips decodes change: crops, turns and exposures of
    scikit-image's photos with sensor-like noise, in turn in each of `formats`, as progressive
    JPEG (4:2:0, 4:4:4 or grey), WebP and PNG, sized by AGREEMENT_MEGAPIXELS."""
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in VARIED_PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        fmt = formats[i % len(formats)]
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9])
        crop = photo.crop((x, y, x + side, y + int(side / aspect)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = crop.rotate(90 * int(rng.integers(4)), expand=True)
        pixels = float(rng.uniform(*AGREEMENT_MEGAPIXELS[fmt])) * 1e6
        scale = (pixels / (crop.width * crop.height)) ** 0.5
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)),
                           Image.Resampling.BICUBIC)
        array = np.asarray(crop, dtype=np.float32) * rng.uniform(0.6, 1.4)
        array += rng.normal(0, rng.uniform(0, 6), array.shape)
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
        if fmt == "progressive":
            kind = int(rng.integers(6))  # mostly 4:2:0, as cameras and Pillow write them
            if kind == 5:
                image = image.convert("L")
            body = _encode(image, "JPEG", quality=int(rng.integers(75, 96)), progressive=True,
                           subsampling=0 if kind == 4 else 2)
        elif fmt == "webp":
            body = _encode(image, "WEBP", quality=int(rng.integers(70, 91)))
        else:
            body = _encode(image, "PNG", compress_level=1)
        out.append((fmt, body))
    return out


def partial_agreement(classifier: Any, count: int, seed: int = 7,
                      mix: Sequence[str] = ("progressive", "progressive", "webp", "png")
                      ) -> dict[str, Any]:
    """Top-1 agreement of the partial decode (progressive JPEG) and the vips one (WebP, PNG)
    with the decode the processor served before them (JPEG draft, Pillow for the rest)."""
    from processor.decode import decode_image, progressive_prefix, vips_factor
    from processor.model import preprocess_image
    from processor.worker import min_decode_side

    size = classifier.input_size
    min_side = min_decode_side(size)

    def top1(body: bytes, **way: bool) -> tuple[int, np.ndarray]:
        decoded = decode_image(body, MAX_PIXELS, min_side=min_side, **way)
        pixels = np.asarray(decoded.image)
        return int(classifier.predict(preprocess_image(decoded.image, size)[None]).argmax()), pixels

    same, formats, draft_same, dc_same, dc_diff = [], [], [], [], []
    dc_path = identical = 0
    shrunk: dict[str, list[bool]] = {}  # per format: agreement where libvips shrank the image
    for fmt, body in agreement_images(count, seed, mix):
        formats.append(fmt)
        before, before_pixels = top1(body, **DECODES["draft"])
        now, now_pixels = top1(body, **DECODES["default" if fmt == "progressive" else "vips"])
        same.append(now == before)
        height, width = before_pixels.shape[:2]
        if fmt != "progressive" and vips_factor(fmt.upper(), (width, height), min_side) > 1:
            shrunk.setdefault(fmt, []).append(now == before)
        if fmt == "progressive":
            prefix = progressive_prefix(body, min_side)
            dc_path += prefix is not None and prefix.end is not None
            identical += np.array_equal(before_pixels, now_pixels)
            # The DC-only decode (IMAGEPIPE_PARTIAL_DECODE_DC): close, not identical.
            dc_top1, dc_pixels = top1(body, **DECODES["dc"])
            dc_same.append(dc_top1 == before)
            if dc_pixels.shape == before_pixels.shape:
                diff = np.abs(dc_pixels.astype(np.int16) - before_pixels.astype(np.int16))
                dc_diff.append((float(diff.mean()), int(diff.max())))
            # For scale: how often Pillow's draft, on for JPEG from the start, keeps the label
            # of the undrafted decode on the same images.
            draft_same.append(top1(body, **DECODES["full"])[0] == before)
    agree, kinds = np.asarray(same), np.asarray(formats)
    per_format = {fmt: float(np.mean(agree[kinds == fmt])) for fmt in sorted(set(formats))}
    return {"agreement": float(agree.mean()), "images": count, "per_format": per_format,
            "progressive_dc_path": dc_path, "progressive_identical": identical,
            "progressive": len(draft_same),
            "vips_shrunk": {fmt: (sum(agreed), len(agreed)) for fmt, agreed in shrunk.items()},
            "dc_agreement_progressive": float(np.mean(dc_same)) if dc_same else None,
            "dc_mean_abs_diff": float(np.mean([m for m, _ in dc_diff])) if dc_diff else None,
            "dc_max_abs_diff": max((m for _, m in dc_diff), default=None),
            "draft_agreement_progressive": float(np.mean(draft_same)) if draft_same else None}


def draft_labels(classifier: Any) -> dict[str, list[str]]:
    """Top-1 label of each test photo as a 12-MP JPEG decoded full and draft."""
    from skimage import data

    from processor.decode import decode_image
    from processor.worker import min_decode_side

    rng = np.random.default_rng(5)
    out: dict[str, list[str]] = {}
    for name in TEST_PHOTOS:
        jpeg = phone_jpeg(getattr(data, name)(), rng, progressive=False)
        tops = []
        for draft in (False, True):
            decoded = decode_image(jpeg, MAX_PIXELS, draft=draft,
                                   min_side=min_decode_side(classifier.input_size))
            tops.append(classifier.classify([decoded.image], top_k=1)[0][0].label)
        out[name] = tops
    return out


VARIED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "camera", "brick", "grass", "gravel", "moon",
                 "clock", "coins", "cell")


def varied_images(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Preprocessed random crops, flips, turns and exposures of scikit-image's sample photos."""
    from skimage import data

    from processor.model import preprocess_image

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in VARIED_PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        w, h = photo.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        image = photo.crop((x, y, x + side, y + side))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = image.rotate(90 * int(rng.integers(4)), expand=True)
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.7, 1.3)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        out.append(preprocess_image(image, size))
    return out


def int8_agreement(keras_model: Any, fp32: Any, size: int, images: int, seconds: float
                   ) -> dict[str, float]:
    """Top-1 agreement of an int8 export (calibrated on other images) with float32, and speed."""
    from processor.engine import LiteRTEngine, export_litert

    calibration = varied_images(100, size, seed=1)
    evaluation = np.stack(varied_images(images, size, seed=2))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "int8.tflite"
        export_litert(keras_model, path, size, calibration=calibration)
        int8 = LiteRTEngine(path)
        agree = float(np.mean(int8.predict(evaluation).argmax(1)
                              == fp32.predict(evaluation).argmax(1)))
        rate = _rate(lambda: len(int8.predict(evaluation[:8])), seconds)
    return {"agreement": agree, "images": images, **rate}


def variant_table(cache_dir: Path, seconds: float) -> list[dict[str, Any]]:
    """Load time, LiteRT images/s and labels on the test photos of each shipped variant."""
    from skimage import data

    from imagepipe.core.catalog import LITE_MODELS, describe_model
    from processor.model import cached_model_file, load_classifier

    rows = []
    for name in LITE_MODELS:
        info = describe_model(name)
        cached = cached_model_file(cache_dir, info, ".tflite").is_file()
        started = time.perf_counter()
        classifier = load_classifier(name, cache_dir=cache_dir, engine=ENGINE_LITERT)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        classifier = load_classifier(name, cache_dir=cache_dir, engine=ENGINE_LITERT)
        warm_load_s = time.perf_counter() - started
        size = classifier.input_size
        batch = np.random.default_rng(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        rate = _rate(lambda c=classifier, b=batch: len(c.predict(b)), seconds)
        tops = classifier.classify([Image.fromarray(getattr(data, p)()) for p in TEST_PHOTOS],
                                   top_k=1)
        rows.append({"model": name, "version": info.version, "input_size": size,
                     "load_s": load_s, "load_from": "cache" if cached else "conversion+export",
                     "warm_load_s": warm_load_s,
                     "ips": rate["ips"],
                     "labels": {p: f"{t[0].label} {t[0].score:.2f}"
                                for p, t in zip(TEST_PHOTOS, tops, strict=True)}})
    return rows


def _event_body(bucket: str, sample: Sample) -> str:
    """An S3 ObjectCreated notification as S3 sends it (keys quote_plus-encoded)."""
    return object_created_body(S3Object(bucket, sample.key, len(sample.data)))


# --- the processor in its own process --------------------------------------------------------


def _proc_status(pid: int | str, field: str) -> float:
    """A memory figure from /proc/<pid>/status, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU-seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _processor_child(conn: Connection, environ: dict[str, str]) -> None:
    """A processor process: one worker for its whole life, as in production; the parent asks
    for its counters before and after each run."""
    os.environ.update(environ)
    from imagepipe.core.aws import make_clients
    from imagepipe.core.settings import Settings
    from processor.model import load_classifier
    from processor.worker import Worker

    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env()
    started = time.perf_counter()
    classifier = load_classifier(settings.model, cache_dir=settings.model_cache_dir,
                                 engine=settings.engine,
                                 threads=settings.inference_threads or None)
    clients = make_clients(settings)
    worker = Worker(settings, clients, classifier,
                    fetch_threads=int(environ.get("BENCH_FETCH_THREADS", "4")))
    thread = threading.Thread(target=worker.run, name="worker")
    thread.start()
    conn.send(("ready", time.perf_counter() - started))
    while conn.recv() == "counters":
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send({
            "stages": worker.stage_times.snapshot(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": _proc_status("self", "VmHWM"),
            "rss_mb": _proc_status("self", "VmRSS"),
        })
    worker.stop()
    thread.join()
    worker.close()


def _counters(processors: Sequence[Processor]) -> list[dict[str, Any]]:
    for p in processors:
        p.conn.send("counters")
    return [p.conn.recv() for p in processors]


def _difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What a processor did between two looks at its counters."""
    stages = {}
    for stage, values in after["stages"].items():
        old = before["stages"].get(stage, {})
        stages[stage] = {key: value - old.get(key, 0) for key, value in values.items()}
    return {"stages": stages, "cpu_s": after["cpu_s"] - before["cpu_s"],
            "peak_rss_mb": after["peak_rss_mb"], "rss_mb": after["rss_mb"]}


@dataclass
class Processor:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    load_s: float


def start_processors(count: int, environ: dict[str, str]) -> list[Processor]:
    context = multiprocessing.get_context("spawn")
    started = []
    for _ in range(count):
        parent, child = context.Pipe()
        process = context.Process(target=_processor_child, args=(child, environ), daemon=True)
        process.start()
        started.append((process, parent))
    out = []
    for process, conn in started:
        _, load_s = conn.recv()
        out.append(Processor(process, conn, load_s))
    return out


def stop_processors(processors: Sequence[Processor]) -> None:
    for p in processors:
        p.conn.send("quit")
        p.process.join(30)
        if p.process.is_alive():
            p.process.kill()


class Stack:
    """moto's server, the resources, the image pool in the bucket, and clients to feed them."""

    def __init__(self, samples: Sequence[Sample], cache_dir: Path) -> None:
        from imagepipe.core.aws import make_clients, queue_url
        from imagepipe.core.provision import provision
        from imagepipe.core.records import ResultStore
        from imagepipe.core.settings import Settings
        from imagepipe.local.stack import free_port, local_environ, start_moto

        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.environ = local_environ(self.endpoint)
        self.moto = start_moto("127.0.0.1", port, self.environ)
        self.settings = Settings.from_env(self.environ, endpoint_url=self.endpoint,
                                          bucket="bench-images", queue="bench-events",
                                          dead_letter_queue="bench-events-dlq",
                                          table="bench-results", poll_seconds=1,
                                          cache_dir=cache_dir.parent, log_level="WARNING",
                                          max_pixels=MAX_PIXELS, max_upload_bytes=50 * 2**20,
                                          # The runs cycle through a pool of objects: every
                                          # message must cost a model run, not a reuse.
                                          reuse_results=False)
        os.environ.update({k: v for k, v in self.environ.items() if k.startswith("AWS_")})
        self.clients = make_clients(self.settings)
        provision(self.settings, self.clients)
        self.queue_url = queue_url(self.clients.sqs, self.settings.queue)
        self.store = ResultStore(self.clients.dynamodb, self.settings.table)
        self.samples = list(samples)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda s: self.clients.s3.put_object(
                Bucket=self.settings.bucket, Key=s.key, Body=s.data), self.samples))
        self.clients.sqs.purge_queue(QueueUrl=self.queue_url)
        self.sent = 0

    def one_lane(self, one: bool) -> dict[str, str]:
        """Tell only the bulk queue of every object (one lane), or go back to two lanes; the
        processors' environment for it."""
        import dataclasses

        from imagepipe.core.provision import provision

        settings = self.settings
        if one:
            settings = dataclasses.replace(settings, interactive_queue="off")
        provision(settings, self.clients)
        return {"IMAGEPIPE_INTERACTIVE_QUEUE": settings.interactive_queue}

    def child_environ(self, **extra: str) -> dict[str, str]:
        env = dict(self.environ)
        env.update(self.settings.environ())
        env.update(extra)
        return env

    def moto_cpu(self) -> float:
        return process_cpu_seconds(self.moto.pid)

    def send(self, count: int) -> None:
        """Queue ``count`` events, ten per call, cycling through the pool's keys."""
        for start in range(0, count, 10):
            entries = []
            for i in range(min(10, count - start)):
                sample = self.samples[self.sent % len(self.samples)]
                self.sent += 1
                entries.append({"Id": str(i),
                                "MessageBody": _event_body(self.settings.bucket, sample)})
            self.clients.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)

    def queue_depth(self) -> tuple[int, int]:
        attrs = self.clients.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    def close(self) -> None:
        from imagepipe.local.stack import stop_processes

        stop_processes(self.moto)


def fetch_ceiling(stack: Stack, threads: int = 4, passes: int = 2) -> dict[str, float]:
    """S3 reads of the mix from the local endpoint alone, and the endpoint's CPU per image."""
    def one(sample: Sample) -> None:
        stack.clients.s3.get_object(Bucket=stack.settings.bucket, Key=sample.key)["Body"].read()

    moto, wall, cpu = stack.moto_cpu(), time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, stack.samples * passes))
    n = len(stack.samples) * passes
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"ips": n / wall, "cpu_s_per_image": cpu / n,
            "endpoint_cpu_s_per_image": (stack.moto_cpu() - moto) / n}


def run_e2e(stack: Stack, processors: Sequence[Processor], images: int) -> dict[str, Any]:
    """From a full queue to the last result written, fed as the processors drain it."""
    stack.sent = 0
    stack.send(min(images, BACKLOG))
    sent = min(images, BACKLOG)
    moto_cpu, rss_samples = stack.moto_cpu(), []
    before = _counters(processors)
    started = time.perf_counter()
    last_sample = started
    while True:
        visible, in_flight = stack.queue_depth()
        if sent < images and visible < BACKLOG // 2:
            more = min(images - sent, BACKLOG - visible)
            stack.send(more)
            sent += more
        elif sent == images and visible == 0 and in_flight == 0:
            break
        now = time.perf_counter()
        if now - last_sample >= 1.0:
            rss_samples.append(sum(_proc_status(p.process.pid, "VmRSS") for p in processors))
            last_sample = now
        # Each look at the queue costs the endpoint a pass over its messages: look rarely
        # while feeding, often only to catch the end.
        time.sleep(0.5 if sent < images else 0.05)
    elapsed = time.perf_counter() - started
    moto_cpu = stack.moto_cpu() - moto_cpu
    stats = [_difference(b, a) for b, a in zip(before, _counters(processors), strict=True)]
    classified = sum(s["stages"].get("inference", {}).get("count", 0) for s in stats)
    stages: dict[str, dict[str, float]] = {}
    for s in stats:
        for stage, values in s["stages"].items():
            total = stages.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0, "count": 0,
                                              "bytes": 0})
            for key in total:
                total[key] += values.get(key, 0)
    cpu = sum(s["cpu_s"] for s in stats)
    return {"images": classified, "messages": images, "seconds": elapsed,
            "ips": classified / elapsed, "cpu_s_per_image": cpu / classified,
            "endpoint_cpu_s_per_image": moto_cpu / classified, "stages": stages,
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stats),
            "rss_mb": sum(s["rss_mb"] for s in stats), "rss_samples_mb": rss_samples}


def _e2e_over_ceiling_cpu(decode: dict[str, float], model: dict[str, float],
                          run: dict[str, Any], endpoint: bool) -> float:
    """e2e/ceiling as it would be with the cores to ourselves: from CPU-seconds per image."""
    ceiling_cpu = max(decode["cpu_s_per_image"], model["cpu_s_per_image"])
    e2e_cpu = run["cpu_s_per_image"] + (run["endpoint_cpu_s_per_image"] if endpoint else 0.0)
    return ceiling_cpu / e2e_cpu


def run_naive(stack: Stack, keras_model: Any, size: int, images: int) -> dict[str, float]:
    """The tutorial way: one message at a time, full decode, one model.predict per image."""
    from imagepipe.core.ids import image_id_for_object
    from imagepipe.core.records import Label, ResultRecord
    from processor.decode import decode_image
    from processor.events import parse_body
    from processor.model import imagenet_labels, preprocess_image

    labels = imagenet_labels()
    stack.sent = 0
    stack.send(images)
    done, started = 0, time.perf_counter()
    cpu = time.process_time()
    while done < images:
        messages = stack.clients.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            [event] = parse_body(message["Body"])
            data = stack.clients.s3.get_object(Bucket=event.bucket, Key=event.key)["Body"].read()
            image = decode_image(data, MAX_PIXELS, draft=False).image
            probabilities = keras_model.predict(preprocess_image(image, size)[np.newaxis],
                                                verbose=0)[0]
            best = int(np.argmax(probabilities))
            record = ResultRecord(image_id_for_object(event.bucket, event.key), event.bucket,
                                  event.key)
            stack.store.save_result(record.done(
                [Label(labels[best], float(probabilities[best]), best)], MODEL, "naive"))
            stack.clients.sqs.delete_message(QueueUrl=stack.queue_url,
                                             ReceiptHandle=message["ReceiptHandle"])
            done += 1
    elapsed = time.perf_counter() - started
    return {"ips": done / elapsed, "cpu_s_per_image": (time.process_time() - cpu) / done}


def _wait_for_result(stack: Stack, image_id: str, poll: float) -> None:
    """Until the image's record is no longer pending."""
    while True:
        record = stack.store.get(image_id)
        if record is not None and record.status != "pending":
            return
        time.sleep(poll)


def run_latency(stack: Stack, processor: Processor, samples: Sequence[Sample],
                uploads: int) -> list[float]:
    """Seconds from put_object to a done result, one upload at a time on an idle pipeline."""
    from imagepipe.core.ids import image_id_for_object

    time.sleep(2.0)  # the worker is polling an empty queue
    latencies = []
    for i in range(uploads):
        sample = samples[i % len(samples)]
        key = f"latency/{i}-{sample.key.rsplit('/', 1)[1]}"
        image_id = image_id_for_object(stack.settings.bucket, key)
        started = time.perf_counter()
        stack.clients.s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=sample.data)
        _wait_for_result(stack, image_id, 0.005)
        latencies.append(time.perf_counter() - started)
        time.sleep(0.3)
    return latencies


def run_backlog_latency(stack: Stack, sample: Sample, uploads: int, backlog: int
                        ) -> list[float]:
    """Seconds from an upload through the front's path (a POST under uploads/) to its done
    result, while the bulk queue is kept `backlog` messages deep."""
    import requests

    from imagepipe.core.ids import new_image_id, upload_key

    stack.sent = 0
    stack.send(backlog)
    time.sleep(1.0)  # the processor is into the backlog
    latencies = []
    for _ in range(uploads):
        visible, _ = stack.queue_depth()
        if visible < backlog:
            stack.send(backlog - visible)
        image_id = new_image_id()
        post = stack.clients.s3.generate_presigned_post(
            Bucket=stack.settings.bucket, Key=upload_key(image_id, "jpg"))
        started = time.perf_counter()
        requests.post(post["url"], data=post["fields"],
                      files={"file": ("photo.jpg", sample.data, "image/jpeg")},
                      timeout=30).raise_for_status()
        _wait_for_result(stack, image_id, 0.01)
        latencies.append(time.perf_counter() - started)
    # The next measurement starts from an empty queue (moto allows one purge a minute).
    while sum(stack.queue_depth()):
        time.sleep(0.2)
    return latencies


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _print_rate(name: str, rate: dict[str, float]) -> None:
    print(f"  {name:<28} {rate['ips']:8.1f} img/s  {rate['cpu_s_per_image'] * 1000:7.1f} "
          "CPU-ms/img")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--images", type=int, default=700,
                        help="messages per end-to-end run (default 700; 3 runs pass 2,100)")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end runs (median)")
    parser.add_argument("--naive-images", type=int, default=40)
    parser.add_argument("--latency-uploads", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=100,
                        help="bulk messages kept queued while uploads are timed (default 100)")
    parser.add_argument("--backlog-uploads", type=int, default=10,
                        help="uploads timed under the bulk backlog, per lane setup")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="seconds per model ceiling measurement")
    parser.add_argument("--cache-dir", type=Path,
                        default=model_cache_dir(DEFAULT_CACHE_DIR))
    parser.add_argument("--output", type=Path, default=RESULTS_FILE)
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--int8", type=int, default=0, metavar="N",
                        help="also measure int8 top-1 agreement with float32 on N varied images")
    parser.add_argument("--agreement", type=int, default=300, metavar="N",
                        help="top-1 agreement of the partial and vips decodes with the draft "
                             "one on N varied images (default 300; 0 skips it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from imagepipe.core.catalog import describe_model
    from processor.engine import LiteRTEngine, default_threads
    from processor.model import build_keras_model, load_classifier

    cores = default_threads()
    print(f"imagepipe bench: {cores} cores, {MODEL}; every figure below is from this run. "
          "The machine may be shared: compare ratios, not absolute numbers.", flush=True)
    started = time.perf_counter()
    samples = make_mix()
    sizes: dict[str, list[int]] = {}
    for sample in samples:
        sizes.setdefault(sample.kind, []).append(len(sample.data))
    print(f"\nimage mix: {len(samples)} objects, "
          + ", ".join(f"{len(v)} {k} (~{statistics.mean(v) / 1e6:.1f} MB)"
                      for k, v in sizes.items()), flush=True)

    variants = [] if args.skip_variants else variant_table(args.cache_dir, args.seconds / 2)
    if variants:
        print("\nshipped variants (LiteRT, one invoke per image, all cores)")
        for row in variants:
            labels = "; ".join(f"{p}: {v}" for p, v in row["labels"].items())
            print(f"  {row['model']:<20} {row['input_size']}px load {row['load_s']:5.1f} s "
                  f"({row['load_from']}), {row['warm_load_s']:4.2f} s from the cache  "
                  f"{row['ips']:6.1f} img/s  {labels}", flush=True)

    info = describe_model(MODEL)
    classifier = load_classifier(MODEL, cache_dir=args.cache_dir, engine=ENGINE_LITERT)
    keras_model = build_keras_model(info, args.cache_dir)
    size = info.input_size
    print("\n1. model ceiling: the bare model on ready tensors", flush=True)
    ceilings = model_ceilings(keras_model, classifier.engine.path, size, args.seconds)
    for name, rate in ceilings.items():
        _print_rate(name, rate)
    litert = ceilings[f"litert_b1_t{cores}"]
    int8 = None
    if args.int8:
        int8 = int8_agreement(keras_model, classifier.engine, size, args.int8, args.seconds)
        verdict = "offered" if int8["agreement"] >= 0.99 else "not offered (below 99%)"
        print(f"  int8 LiteRT: top-1 agreement with float32 {int8['agreement']:.1%} on "
              f"{args.int8} varied images, {int8['ips']:.1f} img/s, "
              f"{int8['cpu_s_per_image'] * 1000:.1f} CPU-ms/img: {verdict}", flush=True)

    print("\n2. decode ceiling: decode + crop/resize alone, the mix, "
          f"{cores} threads", flush=True)
    full = decode_ceiling(samples, size, "full", threads=cores)
    before = decode_ceiling(samples, size, "draft", threads=cores)
    # What the processor does by default (partial decoding): the decode ceiling.
    draft = decode_ceiling(samples, size, "default", threads=cores)
    baseline = [s for s in samples if s.kind == "12mp-baseline"]
    full_12 = decode_ceiling(baseline, size, "full", threads=cores, passes=1)
    draft_12 = decode_ceiling(baseline, size, "draft", threads=cores, passes=1)
    for name, rate in (("mix, full decode", full), ("mix, draft decode", before),
                       ("mix, default decode", draft),
                       ("12-MP baseline, full", full_12), ("12-MP baseline, draft", draft_12)):
        _print_rate(name, rate)
    per_format = decode_per_format([*samples, *extra_samples()], size)
    print("  per kind, one thread, CPU-ms per image (decode + crop/resize; median): full / "
          "draft (before) / default (partial) / DC-only / libvips; full over default, before "
          "over default, over DC-only, over libvips")
    for kind, ms in per_format.items():
        print(f"    {kind:<18} {ms['full']:6.1f} / {ms['draft']:6.1f} / {ms['default']:6.1f}"
              f" / {ms['dc']:6.1f} / {ms['vips']:6.1f}   {ms['full'] / ms['default']:4.1f}x"
              f" {ms['draft'] / ms['default']:4.1f}x {ms['draft'] / ms['dc']:4.1f}x"
              f" {ms['draft'] / ms['vips']:4.1f}x", flush=True)
    agreement = None
    if args.agreement:
        agreement = partial_agreement(classifier, args.agreement)
        print(f"  top-1 agreement with the decode served before (JPEG draft, Pillow) on "
              f"{args.agreement} varied images: progressive JPEG, partial decode "
              f"{agreement['per_format']['progressive']:.1%} ({agreement['progressive_dc_path']}"
              f" of {agreement['progressive']} from their DC scans, "
              f"{agreement['progressive_identical']} pixel-identical), DC-only decode "
              f"{agreement['dc_agreement_progressive']:.1%} (mean abs pixel difference "
              f"{agreement['dc_mean_abs_diff']:.2f}, max {agreement['dc_max_abs_diff']}); "
              f"vips: WebP "
              f"{agreement['per_format']['webp']:.1%}, PNG {agreement['per_format']['png']:.1%}"
              f" (agreeing of those it shrank: {agreement['vips_shrunk']})"
              " (on by default only at 99% or more); for scale, JPEG draft against the "
              f"undrafted decode on the same progressive JPEGs: "
              f"{agreement['draft_agreement_progressive']:.1%}", flush=True)
    labels_full_draft = draft_labels(classifier)
    same = all(a == b for a, b in labels_full_draft.values())
    print(f"  draft against full on 12-MP baseline: {draft_12['ips'] / full_12['ips']:.1f}x "
          f"images/s, {full_12['cpu_s_per_image'] / draft_12['cpu_s_per_image']:.1f}x "
          "CPU-seconds; top-1 on "
          "the test photos as 12-MP JPEGs (full, draft): "
          + "; ".join(f"{k}: {a}, {b}" for k, (a, b) in labels_full_draft.items())
          + (" (same)" if same else " (DIFFERENT)"), flush=True)

    print("\n3. against the local AWS endpoint (moto's server)", flush=True)
    stack = Stack(samples, args.cache_dir)
    try:
        fetch = fetch_ceiling(stack)
        print(f"  S3 reads alone, 4 threads       {fetch['ips']:8.1f} img/s  endpoint "
              f"{fetch['endpoint_cpu_s_per_image'] * 1000:.1f} CPU-ms/img", flush=True)
        # Partial decoding on, libvips off, as by default.
        env = stack.child_environ(IMAGEPIPE_ENGINE=ENGINE_LITERT, IMAGEPIPE_PARTIAL_DECODE="true",
                                  IMAGEPIPE_VIPS_DECODE="false")
        [single] = start_processors(1, env)
        runs = []
        litert_engine = LiteRTEngine(classifier.engine.path)
        ready = np.random.default_rng(1).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        for i in range(1, args.repeats + 1):
            # The machine is shared: measure the ceilings again right before each run and
            # compare each run with its own.
            near_decode = decode_ceiling(samples, size, "default", threads=cores, passes=1)
            near_model = _rate(lambda: len(litert_engine.predict(ready)), args.seconds / 2)
            run = run_e2e(stack, [single], args.images)
            run["ceiling_ips"] = min(near_decode["ips"], near_model["ips"])
            runs.append(run)
            samples_mb = run["rss_samples_mb"] or [run["rss_mb"]]
            print(f"  run {i}: {run['images']} images in {run['seconds']:.1f} s = "
                  f"{run['ips']:.1f} img/s (ceiling just before: {run['ceiling_ips']:.1f}, "
                  f"ratio {run['ips'] / run['ceiling_ips']:.2f}), processor "
                  f"{run['cpu_s_per_image'] * 1000:.1f} CPU-ms/img, endpoint "
                  f"{run['endpoint_cpu_s_per_image'] * 1000:.1f} CPU-ms/img, "
                  f"RSS during the run {min(samples_mb):.0f}-{max(samples_mb):.0f} MB, "
                  f"at its end {run['rss_mb']:.0f} MB", flush=True)
        web_jpegs = [s for s in samples if s.kind == "web-jpeg"]
        latencies = run_latency(stack, single, web_jpegs, args.latency_uploads)
        print("\n  the two lanes: an upload under a bulk backlog, and bulk throughput",
              flush=True)
        lanes_latency = run_backlog_latency(stack, web_jpegs[0], args.backlog_uploads,
                                            args.backlog)
        stop_processors([single])
        [one_queue] = start_processors(1, stack.child_environ(
            IMAGEPIPE_ENGINE=ENGINE_LITERT, **stack.one_lane(True)))
        one_queue_run = run_e2e(stack, [one_queue], args.images)
        one_queue_latency = run_backlog_latency(stack, web_jpegs[0], args.backlog_uploads,
                                                args.backlog)
        stop_processors([one_queue])
        stack.one_lane(False)
        print(f"  bulk throughput: two lanes {statistics.median(r['ips'] for r in runs):.1f} "
              f"img/s (median of the runs above), one queue {one_queue_run['ips']:.1f} img/s",
              flush=True)
        print(f"  upload to result under a {args.backlog}-message bulk backlog: two lanes "
              f"p50 {_percentile(lanes_latency, 50):.2f} s, one queue p50 "
              f"{_percentile(one_queue_latency, 50):.2f} s", flush=True)
        # The same run with whole objects read and every pixel decoded (JPEG draft aside):
        # what partial decoding gains, end to end, on this machine now.
        [whole] = start_processors(1, stack.child_environ(
            IMAGEPIPE_ENGINE=ENGINE_LITERT, IMAGEPIPE_PARTIAL_DECODE="false",
            IMAGEPIPE_VIPS_DECODE="false"))
        run_whole = run_e2e(stack, [whole], args.images)
        stop_processors([whole])
        print(f"  without partial decoding: {run_whole['images']} images in "
              f"{run_whole['seconds']:.1f} s = {run_whole['ips']:.1f} img/s, processor "
              f"{run_whole['cpu_s_per_image'] * 1000:.1f} CPU-ms/img", flush=True)
        pair = start_processors(2, stack.child_environ(
            IMAGEPIPE_ENGINE=ENGINE_LITERT, IMAGEPIPE_INFERENCE_THREADS="1",
            IMAGEPIPE_PARTIAL_DECODE="true", IMAGEPIPE_VIPS_DECODE="false",
            BENCH_FETCH_THREADS="2"))
        two = run_e2e(stack, pair, args.images)
        stop_processors(pair)
        naive = run_naive(stack, keras_model, size, args.naive_images)
    finally:
        stack.close()

    e2e_ips = statistics.median(r["ips"] for r in runs)
    middle = sorted(runs, key=lambda r: r["ips"])[len(runs) // 2]
    print("\n   stages of the median run (seconds and CPU-seconds per image; the stages "
          "overlap, so wall times add up to more than the run)")
    accounted = 0.0
    for stage in ("receive", "download", "decode", "inference", "save", "delete"):
        values = middle["stages"].get(stage)
        if not values:
            continue
        per = max(1, middle["images"])
        accounted += values["cpu_s"] if stage != "inference" else 0.0
        print(f"   {stage:<10} wall {values['wall_s'] / per * 1000:7.2f} ms/img   thread CPU "
              f"{values['cpu_s'] / per * 1000:7.2f} ms/img")
    rest = middle["cpu_s_per_image"] - accounted / max(1, middle["images"])
    print(f"   inference and everything unattributed (LiteRT's own threads, GIL, logging): "
          f"{rest * 1000:.2f} CPU-ms/img")

    def bytes_per_image(run: dict[str, Any]) -> float:
        download = run["stages"].get("download", {})
        return download.get("bytes", 0) / max(1, download.get("count", 0))

    mix_bytes = statistics.mean(len(s.data) for s in samples)
    read_bytes = statistics.median(bytes_per_image(r) for r in runs)
    print(f"\n   bytes read from S3 per image: {read_bytes / 1e3:.0f} kB by default, "
          f"{bytes_per_image(run_whole) / 1e3:.0f} kB without partial decoding (objects average "
          f"{mix_bytes / 1e3:.0f} kB)")
    e2e_over_whole = statistics.median(r["ips"] for r in runs) / run_whole["ips"]

    ceiling_ips = min(litert["ips"], draft["ips"])
    ratios = [r["ips"] / r["ceiling_ips"] for r in runs]
    limiting = min((("model", litert["ips"]), ("decode", draft["ips"]),
                    ("s3_fetch", fetch["ips"])), key=lambda kv: kv[1])[0]
    isolated_cpu = draft["cpu_s_per_image"] + litert["cpu_s_per_image"]
    processor_cpu = statistics.median(r["cpu_s_per_image"] for r in runs)
    endpoint_cpu = statistics.median(r["endpoint_cpu_s_per_image"] for r in runs)
    # What the cores allow when the processor and the endpoint spend this much per image.
    cpu_bound_ips = cores / (processor_cpu + endpoint_cpu)
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": cores,
        "model": MODEL,
        "engine": ENGINE_LITERT,
        "ceiling_ips": round(ceiling_ips, 2),
        "model_ips": round(litert["ips"], 2),
        "decode_ips": round(draft["ips"], 2),
        "decode_full_ips": round(full["ips"], 2),
        "decode_draft_ips": round(before["ips"], 2),
        "decode_partial_ips": round(draft["ips"], 2),
        "decode_cpu_ms_per_kind": {k: {w: round(v, 1) for w, v in ms.items()}
                                   for k, ms in per_format.items()},
        "partial_agreement": None if agreement is None else round(agreement["agreement"], 4),
        "partial_agreement_per_format": None if agreement is None else {
            k: round(v, 4) for k, v in agreement["per_format"].items()},
        "progressive_identical": None if agreement is None else (
            agreement["progressive_identical"], agreement["progressive"]),
        "partial_agreement_images": args.agreement,
        "vips_shrunk_agreement": None if agreement is None else agreement["vips_shrunk"],
        "draft_agreement_progressive": None if agreement is None else round(
            agreement["draft_agreement_progressive"], 4),
        "dc_agreement_progressive": None if agreement is None else round(
            agreement["dc_agreement_progressive"], 4),
        "s3_bytes_per_image": round(read_bytes),
        "s3_bytes_per_image_whole": round(bytes_per_image(run_whole)),
        "e2e_ips_whole_objects": round(run_whole["ips"], 2),
        "e2e_over_whole_objects": round(e2e_over_whole, 2),
        "draft_speedup_12mp_baseline": round(draft_12["ips"] / full_12["ips"], 2),
        "draft_cpu_speedup_12mp_baseline": round(
            full_12["cpu_s_per_image"] / draft_12["cpu_s_per_image"], 2),
        "draft_same_top1": same,
        "fetch_ips": round(fetch["ips"], 2),
        "e2e_ips": round(e2e_ips, 2),
        "e2e_ips_runs": [round(r["ips"], 2) for r in runs],
        "e2e_ips_two_processes": round(two["ips"], 2),
        "naive_ips": round(naive["ips"], 2),
        # Each run against the ceilings measured right before it, then the median.
        "e2e_over_ceiling": round(statistics.median(ratios), 3),
        "e2e_over_ceiling_runs": [round(r, 3) for r in ratios],
        "e2e_over_first_ceiling": round(e2e_ips / ceiling_ips, 3),
        # The same ratio from CPU-seconds per image, which the machine's other work moves less:
        # with the endpoint's CPU counted (it shares the machine here) and without (AWS).
        "e2e_over_ceiling_cpu": round(_e2e_over_ceiling_cpu(draft, litert, middle, True), 3),
        "e2e_over_ceiling_cpu_without_endpoint": round(
            _e2e_over_ceiling_cpu(draft, litert, middle, False), 3),
        "e2e_over_naive": round(e2e_ips / naive["ips"], 2),
        "e2e_over_naive_whole_objects": round(run_whole["ips"] / naive["ips"], 2),
        "overhead_ratio": round(processor_cpu / isolated_cpu, 3),
        "processor_cpu_ms_per_image": round(processor_cpu * 1000, 2),
        "endpoint_cpu_ms_per_image": round(endpoint_cpu * 1000, 2),
        "cpu_bound_ips": round(cpu_bound_ips, 2),
        "e2e_over_cpu_bound": round(e2e_ips / cpu_bound_ips, 3),
        "latency_p50_s": round(_percentile(latencies, 50), 3),
        # The two lanes against one queue, in this run.
        "e2e_ips_one_queue": round(one_queue_run["ips"], 2),
        "lanes_over_one_queue_ips": round(e2e_ips / one_queue_run["ips"], 3),
        "backlog_latency_p50_s": round(_percentile(lanes_latency, 50), 3),
        "backlog_latency_p95_s": round(_percentile(lanes_latency, 95), 3),
        "backlog_latency_one_queue_p50_s": round(_percentile(one_queue_latency, 50), 3),
        "latency_p95_s": round(_percentile(latencies, 95), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "rss_after_each_run_mb": [round(r["rss_mb"], 1) for r in runs],
        "images_through_one_processor": sum(r["images"] for r in runs),
        "limiting_stage": limiting,
        "variants": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
                     for row in variants],
        "int8_agreement": None if int8 is None else round(int8["agreement"], 4),
        "int8_ips": None if int8 is None else round(int8["ips"], 2),
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
    print("\n4. naive baseline (one message at a time, full decode, model.predict per image)")
    print(f"  {naive['ips']:.1f} img/s, {naive['cpu_s_per_image'] * 1000:.1f} CPU-ms/img")
    print(f"\n5. upload-to-result latency, one upload at a time on an idle pipeline "
          f"({len(latencies)} uploads)")
    print(f"  p50 {summary['latency_p50_s']:.3f} s, p95 {summary['latency_p95_s']:.3f} s")
    print(f"\n6. two lanes: bulk throughput {e2e_ips:.1f} img/s against one queue "
          f"{one_queue_run['ips']:.1f} ({summary['lanes_over_one_queue_ips']}x); an upload "
          f"under a {args.backlog}-message bulk backlog takes p50 "
          f"{summary['backlog_latency_p50_s']:.2f} s (p95 {summary['backlog_latency_p95_s']:.2f})"
          f" to its result, against {summary['backlog_latency_one_queue_p50_s']:.2f} s with "
          "one queue")
    print(f"\n7. processor memory: peak {summary['peak_rss_mb']:.0f} MB over "
          f"{summary['images_through_one_processor']} images; resident after each run "
          f"{summary['rss_after_each_run_mb']} MB")
    print("\ntwo processor processes (1 LiteRT thread and 2 fetch threads each) against one:")
    print(f"  {two['ips']:.1f} against {e2e_ips:.1f} img/s ({two['ips'] / e2e_ips:.2f}x), "
          f"{two['cpu_s_per_image'] * 1000:.1f} against {processor_cpu * 1000:.1f} "
          "processor CPU-ms/img")
    print("\nsummary")
    print(f"  end to end {e2e_ips:.1f} img/s (runs {summary['e2e_ips_runs']}), ceiling "
          f"{ceiling_ips:.1f} img/s (model {litert['ips']:.1f}, decode {draft['ips']:.1f}): "
          f"e2e/ceiling {summary['e2e_over_first_ceiling']}; against the ceilings measured "
          f"next to each run {summary['e2e_over_ceiling_runs']}, median "
          f"{summary['e2e_over_ceiling']}")
    print(f"  partial decoding: e2e/naive {summary['e2e_over_naive']} against "
          f"{summary['e2e_over_naive_whole_objects']} without it in this run "
          f"({summary['e2e_over_whole_objects']}x the images/s), "
          f"{summary['s3_bytes_per_image'] / 1e3:.0f} against "
          f"{summary['s3_bytes_per_image_whole'] / 1e3:.0f} kB read per image")
    print(f"  e2e/naive {summary['e2e_over_naive']}, overhead ratio "
          f"{summary['overhead_ratio']} (processor {summary['processor_cpu_ms_per_image']} "
          f"CPU-ms/img against decode + model alone {isolated_cpu * 1000:.1f})")
    print(f"  from CPU-seconds per image (the cores to ourselves): e2e/ceiling "
          f"{summary['e2e_over_ceiling_cpu']} with the endpoint's CPU, "
          f"{summary['e2e_over_ceiling_cpu_without_endpoint']} without it "
          f"(endpoint {summary['endpoint_cpu_ms_per_image']} CPU-ms/img)")
    spent_ms = (processor_cpu + endpoint_cpu) * 1000
    print(f"  the cores allow {cpu_bound_ips:.1f} img/s at {spent_ms:.0f} CPU-ms per image "
          f"(processor and endpoint): e2e reaches "
          f"{summary['e2e_over_cpu_bound']:.0%} of that")
    print(f"  limiting stage: {limiting}\n")
    line = json.dumps(summary)
    print(line)
    with args.output.open("a") as out:
        out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
