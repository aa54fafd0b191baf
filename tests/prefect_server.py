"""Helpers for integration tests against a REAL Prefect server and REAL workers.

`PrefectServer` starts `prefect server start` on a free loopback port with its own PREFECT_HOME and
SQLite database, waits for /api/health, runs CLI commands and workers against it, and on `stop()`
kills every process it started together with their descendants (process groups plus a /proc walk,
since the process worker may start flow-run processes in sessions of their own).

    with PrefectServer(tmp_path) as server:
        server.cli("work-pool", "create", "pool", "--type", "process")
        worker = server.start_worker("pool")
        with server.settings():                 # get_client() in this process talks to the server
            ...

Nothing here needs a network beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PREFECT_EXE = str(VENV_BIN / "prefect") if (VENV_BIN / "prefect").exists() else "prefect"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: parse after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc); empty elsewhere."""
    if not Path("/proc").is_dir():
        return []
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def stop_process_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group of `proc` and every descendant, then SIGKILL what is left."""
    if proc.poll() is None or descendants(proc.pid):
        pids = [proc.pid, *descendants(proc.pid)]
        groups = {proc.pid}  # started with start_new_session=True, so pgid == pid
        for pid in pids:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        groups.discard(os.getpgid(0))  # never signal our own group
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pgid in groups:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, sig)
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline:
                proc.poll()
                if not any(_alive(pid) for pid in pids):
                    break
                time.sleep(0.2)
            else:
                continue
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class PrefectServer:
    """A real Prefect server on 127.0.0.1 with a private PREFECT_HOME and SQLite database."""

    def __init__(self, root: Path, port: int | None = None, server_env: Mapping[str, str] | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "prefect-home"
        self.home.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.db_url = f"sqlite+aiosqlite:///{self.root / 'prefect.db'}"
        self.log_path = self.root / "server.log"
        self._server_env_extra = dict(server_env or {})
        self._server: subprocess.Popen | None = None
        self._procs: list[subprocess.Popen] = []
        self._logs: list = []

    # -- environments ------------------------------------------------------------------------------
    def _base_env(self) -> dict[str, str]:
        # drop the caller's Prefect configuration (profiles, API URLs) so nothing leaks in or out
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_PROFILES_PATH=str(self.home / "profiles.toml"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
            PREFECT_CLI_PROMPT="false",
            PYTHONUNBUFFERED="1",
            NO_COLOR="1",
            COLUMNS="200",
        )
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env

    def server_env(self) -> dict[str, str]:
        env = self._base_env()
        env.update(
            PREFECT_API_DATABASE_CONNECTION_URL=self.db_url,
            PREFECT_SERVER_UI_ENABLED="false",
            # tests trigger runs themselves; the scheduler would only add future runs (and CPU load)
            PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        )
        env.update(self._server_env_extra)
        return env

    def client_env(self, **extra: str | None) -> dict[str, str]:
        """Environment for CLI commands, workers and flow runs talking to this server.

        `extra` adds variables; a value of None removes one (e.g. SAM2RAD_HOME=None).
        """
        env = self._base_env()
        env["PREFECT_API_URL"] = self.api_url
        env.update(extra)
        return {k: v for k, v in env.items() if v is not None}

    @contextlib.contextmanager
    def settings(self) -> Iterator[None]:
        """Point the Prefect client of *this* process (get_client()) at the server."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "PrefectServer":
        log = open(self.log_path, "ab")
        self._logs.append(log)
        self._server = subprocess.Popen(
            [PREFECT_EXE, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.root, env=self.server_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        self._procs.append(self._server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self._server.returncode}:\n{self.server_log()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s:\n{self.server_log()}")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            stop_process_tree(proc)
        self._procs.clear()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
        self._logs.clear()

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def server_log(self, tail: int = 6000) -> str:
        return _tail(self.log_path, tail)

    # -- commands and workers ----------------------------------------------------------------------
    def cli(self, *args: str, cwd: Path | str = REPO_ROOT, timeout: float = 180.0,
            env: Mapping[str, str | None] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run `prefect <args>` against the server; raises with its output on failure."""
        return self.run([PREFECT_EXE, *args], cwd=cwd, timeout=timeout, env=env, check=check)

    def run(self, argv: Sequence[str], cwd: Path | str = REPO_ROOT, timeout: float = 180.0,
            env: Mapping[str, str | None] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(argv), cwd=cwd, env=self.client_env(**dict(env or {})), capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {result.returncode}\n"
                f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
            )
        return result

    def start_worker(self, pool: str, worker_type: str = "process", name: str = "test-worker",
                     limit: int | None = 1, env: Mapping[str, str | None] | None = None,
                     cwd: Path | str = REPO_ROOT, extra_args: Sequence[str] = ()) -> subprocess.Popen:
        """Start `prefect worker start` polling `pool` every second; its log is `worker_log(name)`."""
        log_path = self.root / f"worker-{name}.log"
        log = open(log_path, "ab")
        self._logs.append(log)
        worker_env = self.client_env(
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5",
            **dict(env or {}),
        )
        argv = [PREFECT_EXE, "worker", "start", "--pool", pool, "--type", worker_type, "--name", name,
                "--install-policy", "never", *extra_args]
        if limit is not None:
            argv += ["--limit", str(limit)]
        proc = subprocess.Popen(argv, cwd=cwd, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        return proc

    def worker_log(self, name: str = "test-worker", tail: int = 8000) -> str:
        return _tail(self.root / f"worker-{name}.log", tail)


def _tail(path: Path, n: int) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return "<no log>"


async def wait_for_flow_run(client, flow_run_id, timeout: float = 240.0, poll: float = 1.0):
    """Poll a flow run through the API until it is final; returns the flow run (TimeoutError if not)."""
    import asyncio

    deadline = time.monotonic() + timeout
    flow_run = await client.read_flow_run(flow_run_id)
    while time.monotonic() < deadline:
        flow_run = await client.read_flow_run(flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        await asyncio.sleep(poll)
    state = flow_run.state.type.value if flow_run.state else None
    raise TimeoutError(f"flow run {flow_run_id} not final after {timeout:.0f}s (state {state})")


async def flow_run_logs(client, flow_run_id, limit: int = 200) -> str:
    """The flow run's log lines as text, for failure messages."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = await client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=limit,
    )
    return "\n".join(f"{log.timestamp} {log.level} {log.message}" for log in logs)
