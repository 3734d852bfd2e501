"""Run NVIDIA Triton Inference Server on this machine from the ``tritonserver`` binary in the nvidia-pytriton wheel.

    gamma-triton --model-repository model_repository/ [--grpc-port 8001 --http-port 8000 --metrics-port 8002]

Why the wheel: it is the only Triton build installable without Docker or a GPU (server 2.51 with the python
backend only). The binary is used directly, not pytriton's Python API, so the model repository on disk is the
same one a GPU host serves with the official image (see deploy/README.md).

What it takes to start (found by trial, see /work/shared/notes/local-services.md):
- a writable copy of the wheel's ``tritonserver`` folder with the python-backend stub built for this Python,
- ``LD_LIBRARY_PATH`` = this interpreter's libpython folder (else the stub picks the system libpython and fails)
  + ``nvidia_pytriton.libs`` (the wheel's vendored shared libraries),
- ``PATH`` starting with this venv's ``bin/``: the stub embeds Python in isolated mode (``PYTHONPATH`` is ignored)
  and finds its prefix from the first ``python3`` on ``PATH``; with the venv's first, it reads ``pyvenv.cfg`` and
  imports numpy and onnxruntime from this venv, not from the system Python.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

DEFAULT_HOST = "127.0.0.1"
STUB_NAME = "triton_python_backend_stub"


class TritonServerError(RuntimeError):
    """The server could not be prepared, exited, or did not become ready in time (the log tail says why)."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it; tests start servers on these)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wheel_paths() -> tuple[Path, Path]:
    """(the wheel's tritonserver folder, its vendored shared-library folder)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError("nvidia-pytriton is not installed: pip install --no-deps nvidia-pytriton==0.7.0")
    package = Path(next(iter(spec.submodule_search_locations)))
    server, libs = package / "tritonserver", package.parent / "nvidia_pytriton.libs"
    if not (server / "bin" / "tritonserver").is_file():
        raise TritonServerError(f"{server}/bin/tritonserver missing: reinstall nvidia-pytriton")
    return server, libs


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gamma-moderation"


def prepare_install(cache_dir: Path | None = None) -> Path:
    """A writable copy of the wheel's server with this Python's stub installed; made once, reused after.

    The copy is built in a temporary folder and renamed into place, so two processes preparing it at the same
    time both end up with a complete one.
    """
    source, _ = _wheel_paths()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    version = importlib.metadata.version("nvidia-pytriton")
    cache = cache_dir or default_cache_dir()
    target = cache / f"tritonserver-{version}-py{python}"
    if (target / ".complete").is_file():
        return target
    stub = source / "python_backend_stubs" / python / STUB_NAME
    if not stub.is_file():
        raise TritonServerError(f"no python backend stub for Python {python} in {stub.parent.parent}")
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tritonserver-", dir=cache))
    try:
        copy = scratch / "tritonserver"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, copy / "backends" / "python" / STUB_NAME)
        (copy / ".complete").touch()
        try:
            copy.rename(target)
        except OSError:
            if not (target / ".complete").is_file():  # lost a race to a complete copy: fine; else a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server process (see the module docstring for why each variable)."""
    env = dict(os.environ if base is None else base)
    _, libs = _wheel_paths()
    libpython = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libpython, str(libs), env.get("LD_LIBRARY_PATH")) if p)
    scripts = sysconfig.get_paths()["scripts"]  # the venv's bin/ (or the base interpreter's without a venv)
    env["PATH"] = os.pathsep.join(p for p in (scripts, env.get("PATH")) if p)
    return env


class TritonServer:
    """A local Triton server process, bound to ``host`` (127.0.0.1 unless you mean to expose it).

    >>> with TritonServer("model_repository", grpc_port=8001) as server:   # doctest: +SKIP
    ...     server.grpc_url                                                 # '127.0.0.1:8001'

    ``start`` returns at once; ``wait_ready`` polls ``/v2/health/ready`` (all models loaded); ``stop`` sends
    SIGTERM (Triton drains in-flight requests), then SIGKILL after ``stop_timeout``. The process runs in its own
    session, so only this PID and its python-backend stubs are ever signalled.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        host: str = DEFAULT_HOST,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int | None = None,
        log_file: str | Path | None = None,
        log_verbose: int = 0,
        cache_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_file = Path(log_file) if log_file else Path(tempfile.gettempdir()) / f"tritonserver-{grpc_port}.log"
        self.log_verbose = log_verbose
        self.cache_dir = cache_dir
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self, install: Path) -> list[str]:
        metrics = (
            [
                "--allow-metrics=true",
                f"--metrics-address={self.host}",
                f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false",
            ]
            if self.metrics_port
            else ["--allow-metrics=false"]
        )
        return [
            str(install / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={install / 'backends'}",
            f"--cache-directory={install / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            *metrics,
            # 16 MiB of shared memory per python stub holds a batch of 8 full 512x512 tiles (more of smaller ones)
            # without growing the region on the first request. (The pinned pool stays at its default: set to 0,
            # every request logs a fallback.)
            "--backend-config=python,shm-default-byte-size=16777216",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self) -> TritonServer:
        if self.process is not None and self.process.poll() is None:
            raise TritonServerError(f"already running (pid {self.process.pid})")
        if not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} is not a folder")
        install = prepare_install(self.cache_dir)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(install),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(),
                start_new_session=True,
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def is_ready(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 60.0) -> TritonServer:
        """Block until the server and every model are ready; raise with the log tail if it exits or times out."""
        if self.process is None:
            raise TritonServerError("not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonServerError(f"tritonserver exited with {code}; log {self.log_file}:\n{self.log_tail()}")
            if self.is_ready():
                return self
            time.sleep(0.2)
        raise TritonServerError(f"not ready after {timeout:.0f} s; log {self.log_file}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the process group; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the group: its python stubs die with it
                process.wait()
        return process.returncode

    def __enter__(self) -> TritonServer:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gamma-triton", description="Serve a model repository with Triton.")
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus metrics (off unless given)")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    server = TritonServer(
        args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
    )
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        server.start()
        print(f"tritonserver pid {server.process.pid if server.process else '?'}, log {server.log_file}", flush=True)
        server.wait_ready(args.ready_timeout)
        print(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}", flush=True)
        while not stop_requested and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except TritonServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return 1
    except KeyboardInterrupt:
        pass
    code = server.process.poll() if server.process else None
    server.stop()
    if code not in (None, 0):
        print(f"tritonserver exited with {code}; log {server.log_file}:\n{server.log_tail()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
