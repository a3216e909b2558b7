"""``pysendmail serve``: the process that ties the listeners, the runner and the probes together.

Start-up: load the configuration (full validation, the users' hashes, the
TLS certificate, the aliases), make sure the queue exists, bind every
listener (TCP addresses and the unix socket) and the HTTP address, then — when
started as root — become the queue's owner, start the commit processes
(``committer``: intake and group commit) and the ``queue.connections``
delivery processes (``delivery``), wait until they have started (the
listeners already listen: a client's connection waits in the kernel's
backlog for its greeting meanwhile), start accepting, start the
runner in a thread (``Runner.watch``: woken by every commit through the
trigger FIFO, this process's and any other's on a shared volume, and by retry
times, delivering through those processes), and serve.

Signals:

* SIGTERM, SIGINT: stop accepting (listeners closed, /healthz 503); idle
  sessions get ``421`` at once, a session inside a transaction may finish it;
  after ``server.shutdown_timeout`` whatever is left is disconnected (a
  message not yet acknowledged is the client's to send again). The runner
  finishes the message it is delivering and starts no other. Exit 0.
  Nothing acknowledged is lost: every 250 followed a commit.
* SIGHUP: load the configuration again; on success the new rules, users,
  certificate and aliases apply to new connections and messages, and the log
  says what changed (listen addresses, the queue and the log need a restart);
  on failure the running configuration stays and the log says why.

Runs as a non-root user on a read-only root file system: it writes only in
the queue (the spool of DATA, the queue files, the health probe) and the unix
socket's path, and never writes a configuration snapshot.

What this module must never do: exit before the commits under way are done,
send 250 anywhere but after a commit, or keep running as root when the queue
belongs to another user.

SECURITY: the hashes and the TLS key are read before privileges are dropped
and again on SIGHUP (as the queue owner, who must then be able to read them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import stat
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pysendmail import __version__, errors
from pysendmail.queue.spool import Queue
from pysendmail.runner import Runner, RunSummary
from pysendmail.server.committer import GroupCommitter
from pysendmail.server.delivery import DeliveryPool
from pysendmail.server.http import HTTPServer
from pysendmail.server.listener import SHUTTING_DOWN, Handler, Registry
from pysendmail.server.metrics import CONTENT_TYPE, Metrics, ServerLogger, queue_gauges
from pysendmail.server.policy import Loaded, Policy
from pysendmail.server.submit import QueueSubmitter

if TYPE_CHECKING:
    from pysendmail.cli import Streams
    from pysendmail.config.settings import Server as ServerSettings

#: Threads that run the intake and the commit (fsync-bound: more threads, more
#: commits share one journal flush).
COMMIT_THREADS = 16
#: Threads that check passwords (scrypt takes 16 MiB and tens of milliseconds each).
VERIFY_THREADS = 2
#: How long serve waits for its commit and delivery processes to start before
#: it accepts clients anyway (an interpreter starts in a tenth of a second).
HELPER_START_WAIT = 10.0
#: Connections the kernel queues for each listener until serve accepts them.
LISTEN_BACKLOG = 512
#: How often a shutdown looks for sessions that finished their transaction.
SWEEP_INTERVAL = 0.05
#: Keys whose change needs a restart (they are bound or opened at start).
RESTART_KEYS = (
    "server.listen",
    "server.unix_socket",
    "server.unix_socket_mode",
    "server.http_listen",
    "general.queue_dir",
    "log.",
)


class ListenError(errors.PysendmailError):
    """A listener could not be bound (the address is in use, or not ours)."""

    exit_status = errors.EX_OSERR


# --------------------------------------------------------------------------- configuration


def make_tls_context(server: ServerSettings, source: str) -> ssl.SSLContext | None:
    """The server's TLS context from ``tls_cert``/``tls_key``, or None when not configured."""
    if server.tls_cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except OSError as exc:
        raise errors.ConfigError(
            f"{source}: server.tls_cert: cannot read {server.tls_cert} or its key: "
            f"{exc.strerror or exc}"
        ) from None
    except ssl.SSLError as exc:
        raise errors.ConfigError(
            f"{source}: server.tls_cert: {server.tls_cert} and its key do not load: {exc.reason}"
        ) from None
    return context


def load(config_path: str | None, environ: Mapping[str, str]) -> Loaded:
    """Validate the configuration and read what ``serve`` needs besides (no snapshot is written)."""
    from pysendmail.config.loader import load_validated
    from pysendmail.config.settings import settings_from_data
    from pysendmail.config.snapshot import resolve_config_path
    from pysendmail.message.aliases import Aliases
    from pysendmail.server.passwords import load_users

    path, explicit = resolve_config_path(config_path, environ)
    validated = load_validated(path, explicit, environ)
    settings = settings_from_data(validated.data)
    server = settings.server
    users, warnings = load_users(list(validated.model.server.users), server.users_file, path)
    tls = make_tls_context(server, path)
    aliases = Aliases.load(settings.general.aliases_file)
    warnings += aliases.errors
    return Loaded(settings, users, tls, aliases, warnings)


def _flatten(data: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(data, tuple) and data and all(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            _flatten(value, f"{prefix}[{index}]", out)
    else:
        out[prefix] = data


def changes(old: Loaded, new: Loaded) -> list[str]:
    """One line per changed key (values shown: the settings hold no secret), and the users."""
    from pysendmail.config.settings import settings_to_data

    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(settings_to_data(old.settings), "", before)
    _flatten(settings_to_data(new.settings), "", after)
    before.pop("source_exists", None)
    after.pop("source_exists", None)
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            key_name = key.replace("relays[", "relay[")
            note = " (restart to apply)" if key_name.startswith(RESTART_KEYS) else ""
            lines.append(f"{key_name}: {before.get(key)!r} -> {after.get(key)!r}{note}")
    old_users, new_users = old.users.fingerprint(), new.users.fingerprint()
    for name in sorted(set(old_users) | set(new_users)):
        if name not in new_users:
            lines.append(f"server.users: {name} removed")
        elif name not in old_users:
            lines.append(f"server.users: {name} added")
        elif old_users[name] != new_users[name]:
            lines.append(f"server.users: {name}: password changed")
    return lines


# --------------------------------------------------------------------------- the runner


class ServeRunner(Runner):
    """The runner of ``serve``: its deliveries go to the delivery processes when they run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The delivery processes (``pysendmail.server.delivery``); without
        #: them (none could start) the deliveries run in threads, as before.
        self.pool: DeliveryPool | None = None

    def _work_all(self, feed: Any, summary: RunSummary) -> None:
        pool = self.pool
        if pool is None or not pool.available():
            super()._work_all(feed, summary)
            return
        failure = pool.run(self, feed.take_all(), feed.forced, summary)
        if failure is not None:
            raise failure


# --------------------------------------------------------------------------- the process


class App:
    """One ``serve`` process (see the module docstring). ``run()`` returns the exit status."""

    def __init__(
        self,
        config_path: str | None,
        environ: Mapping[str, str],
        loaded: Loaded,
        logger: ServerLogger,
        metrics: Metrics,
    ) -> None:
        self.config_path = config_path
        self.environ = environ
        self.loaded = loaded
        self.log = logger
        self.metrics = metrics
        settings = loaded.settings
        self.queue = Queue(settings.general.queue_dir)
        self.policy = Policy(loaded)
        self.registry = Registry()
        self.executor = ThreadPoolExecutor(COMMIT_THREADS, thread_name_prefix="pysendmail-commit")
        self.verifier = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="pysendmail-auth")
        self.submitter = QueueSubmitter(self.queue, lambda: self.policy, logger, metrics)
        self.handler = Handler(
            self.policy,
            self.submitter,
            self.executor,
            spool_dir=self.queue.dir("tmp"),
            log=self._log_line,
            metrics=metrics,
            verify_executor=self.verifier,
            registry=self.registry,
        )
        self.group = GroupCommitter(self.queue.root, self.policy, self.submitter, logger)
        self.servers: list[asyncio.Server] = []
        self.addresses: list[str] = []
        self.http: HTTPServer | None = None
        self.stopping = threading.Event()
        self.runner = ServeRunner(settings, logger=logger, queue=self.queue, stopping=self.stopping)
        self.pool = DeliveryPool(
            settings.queue.connections, logger, nice=settings.server.delivery_nice
        )
        self.runner_thread: threading.Thread | None = None
        self._stop_requested: asyncio.Event | None = None
        self._reloading = False
        #: Set once every listener is bound and the runner runs (tests and embedders wait on it).
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _log_line(self, text: str, level: str) -> None:
        self.log.line(text, level)

    # -- start ---------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        loop.set_exception_handler(self._loop_exception)
        self._stop_requested = asyncio.Event()
        try:
            await self._bind(loop)
            _drop_privileges(self.queue, self._log_line)
            # From here SIGTERM is a clean stop, even while the helpers start.
            self._install_signals(loop)
            await self._start_committer(loop)
            self._start_pool()
            await self._wait_helpers(loop)
            if not self._stop_requested.is_set():
                for srv in self.servers:
                    await srv.start_serving()
                self._start_runner()
                shown = ", ".join(self.addresses)
                self.log.line(f"pysendmail {__version__} serving on {shown}")
                for warning in self.loaded.warnings:
                    self.log.line(warning, "warning")
                self.ready.set()
            await self._stop_requested.wait()
        finally:
            await self._shutdown()
        return 0

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        from pysendmail.config.model import split_listen

        server = self.loaded.settings.server

        def factory() -> asyncio.Protocol:
            return self.handler.protocol(loop)

        for address in server.listen:
            host, port = split_listen(address)
            try:
                srv = await loop.create_server(
                    factory, host, port, backlog=LISTEN_BACKLOG, start_serving=False
                )
                _listen_now(srv)
            except OSError as exc:
                raise ListenError(
                    f"server.listen: cannot listen on {address}: {exc.strerror or exc}"
                ) from None
            self.servers.append(srv)
            bound = srv.sockets[0].getsockname()
            shown = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
            self.addresses.append(shown)
        if server.unix_socket is not None:
            path = server.unix_socket
            _remove_stale_socket(path)
            try:
                srv = await loop.create_unix_server(
                    factory, path, backlog=LISTEN_BACKLOG, start_serving=False
                )
                os.chmod(path, server.unix_socket_mode)
                _listen_now(srv)
            except OSError as exc:
                raise ListenError(
                    f"server.unix_socket: cannot listen on {path}: {exc.strerror or exc}"
                ) from None
            self.servers.append(srv)
            self.addresses.append(path)
        if server.http_listen is not None:
            host, port = split_listen(server.http_listen)
            self.http = HTTPServer({"/healthz": self._healthz, "/metrics": self._metrics})
            try:
                await self.http.start(host, port)
            except OSError as exc:
                raise ListenError(
                    f"server.http_listen: cannot listen on {server.http_listen}: "
                    f"{exc.strerror or exc}"
                ) from None
            assert self.http.server is not None
            bound = self.http.server.sockets[0].getsockname()
            self.addresses.append(f"http://{bound[0]}:{bound[1]}")

    async def _start_committer(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self.group.start(loop)
        except OSError as exc:
            self._log_line(f"no commit process ({exc}): committing in threads", "warning")
            return
        self.handler.group_submit = self.group

    def _start_pool(self) -> None:
        try:
            self.pool.start()
        except OSError as exc:
            self._log_line(f"no delivery processes ({exc}): delivering in threads", "warning")
            return
        self.pool.prepare(self.runner.settings)
        self.runner.pool = self.pool

    async def _wait_helpers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (a bounded time) until the commit and delivery processes have started.

        The listeners listen but accept nobody meanwhile (a client that comes
        now waits for its greeting): sessions would otherwise wait for
        interpreters to load, and their start-up would take CPU from the
        first sessions. Past ``HELPER_START_WAIT`` serve accepts anyway (the
        messages wait in the helpers' sockets) and says so.
        """
        committers, workers = await asyncio.gather(
            self.group.wait_ready(HELPER_START_WAIT),
            loop.run_in_executor(None, self.pool.wait_ready, HELPER_START_WAIT),
        )
        if not (committers and workers):
            late = " and ".join(
                name
                for name, ready in (("the commit", committers), ("the delivery", workers))
                if not ready
            )
            self._log_line(
                f"{late} processes did not start within {HELPER_START_WAIT:g}s: accepting anyway",
                "warning",
            )

    def _start_runner(self) -> None:
        def watch() -> None:
            try:
                self.runner.watch(self.stopping)
            except BaseException as exc:  # a bug: /healthz says so, the log says what
                self._log_line(f"runner: stopped: {type(exc).__name__}: {exc}", "error")

        self.runner_thread = threading.Thread(target=watch, name="pysendmail-runner", daemon=True)
        self.runner_thread.start()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        except (ValueError, RuntimeError):
            pass  # not the main thread (a test): request_stop() and reload() are called directly

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        text = context.get("message", "")
        if error is not None:
            text = f"{text}: {type(error).__name__}: {error}"
        self._log_line(f"event loop: {text}", "warning")

    # -- signals -------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop_requested is not None:
            self._stop_requested.set()

    def stop_soon(self) -> None:
        """``request_stop`` from another thread."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.request_stop)

    def request_reload(self) -> None:
        if not self._reloading:
            self._reloading = True
            task = asyncio.get_running_loop().create_task(self.reload())
            task.add_done_callback(lambda _t: setattr(self, "_reloading", False))

    async def reload(self) -> bool:
        """SIGHUP: load the configuration again; keep the running one when it fails."""
        loop = asyncio.get_running_loop()
        self._log_line("reloading the configuration", "info")
        try:
            new = await loop.run_in_executor(None, load, self.config_path, self.environ)
            new.settings.need_relays()
        except (errors.PysendmailError, OSError) as exc:
            self._log_line(f"reload failed, the running configuration stays: {exc}", "error")
            return False
        lines = changes(self.loaded, new)
        self.loaded = new
        self.policy = Policy(new)
        self.handler.set_policy(self.policy)
        self.group.set_policy(self.policy)
        self.runner.settings = new.settings
        self.pool.size = max(1, new.settings.queue.connections)
        self.pool.nice = new.settings.server.delivery_nice
        for line in lines:
            self._log_line(f"reload: {line}", "info")
        for warning in new.warnings:
            self._log_line(warning, "warning")
        self._log_line(f"configuration reloaded: {len(lines)} change(s)", "info")
        return True

    # -- probes --------------------------------------------------------------

    def health_problems(self) -> list[str]:
        """Why /healthz would say 503 (empty: healthy). Touches the disk: not on the loop."""
        problems = []
        if self.registry.closing:
            problems.append("shutting down")
        elif not self.servers or not all(s.is_serving() for s in self.servers):
            problems.append("a listener is not serving")
        if self.runner_thread is None or not self.runner_thread.is_alive():
            problems.append("the queue runner is not running")
        probe = self.queue.path("tmp", f".healthz.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"ok\n")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            problems.append(f"the queue is not writable: {exc.strerror or exc}")
        return problems

    async def _healthz(self) -> tuple[int, str, str]:
        loop = asyncio.get_running_loop()
        problems = await loop.run_in_executor(None, self.health_problems)
        if problems:
            return 503, "text/plain; charset=utf-8", "".join(p + "\n" for p in problems)
        return 200, "text/plain; charset=utf-8", "ok\n"

    async def _metrics(self) -> tuple[int, str, str]:
        loop = asyncio.get_running_loop()

        def read() -> tuple[Any, bool]:
            try:
                gauges = queue_gauges(self.queue)
            except (OSError, errors.PysendmailError):
                gauges = None
            return gauges, not self.health_problems()

        gauges, healthy = await loop.run_in_executor(None, read)
        return 200, CONTENT_TYPE, self.metrics.render(gauges, healthy)

    # -- stop ----------------------------------------------------------------

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        settings = self.loaded.settings
        deadline = loop.time() + settings.server.shutdown_timeout
        self.registry.closing = True
        for srv in self.servers:
            srv.close()
        if self.runner_thread is not None:
            self._log_line("stopping: no new connections; finishing transactions", "info")
        # Idle sessions are told at once; a transaction under way may finish.
        while self.registry.sessions and loop.time() < deadline:
            for session in list(self.registry.sessions):
                if not session.in_transaction:
                    session.say_goodbye(SHUTTING_DOWN)
            await asyncio.sleep(SWEEP_INTERVAL)
        left = len(self.registry.sessions)
        for session in list(self.registry.sessions):
            session.say_goodbye(SHUTTING_DOWN)
        if left:
            self._log_line(
                f"stopping: {left} session(s) still in a transaction after "
                f"shutdown_timeout: disconnected, their messages were not acknowledged",
                "warning",
            )
        for srv in self.servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        # Commits under way finish: their clients may already have their 250.
        await self.group.close()
        await loop.run_in_executor(None, self.executor.shutdown, True)
        self.verifier.shutdown(wait=False, cancel_futures=True)
        self.stopping.set()
        self.pool.interrupt()  # each delivery process finishes the message under way
        if self.runner_thread is not None:
            remaining = max(0.1, deadline - loop.time())
            await loop.run_in_executor(None, self.runner_thread.join, remaining)
            if self.runner_thread.is_alive():
                self._log_line(
                    "stopping: a delivery is still under way after shutdown_timeout; exiting "
                    "anyway (the message stays queued; its state says what was done)",
                    "warning",
                )
        await loop.run_in_executor(None, self.pool.close, max(0.1, deadline - loop.time()))
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()
        path = settings.server.unix_socket
        if path is not None and any(a == path for a in self.addresses):
            _remove_stale_socket(path)
        if self.runner_thread is not None:
            self._log_line("stopped", "info")


def _listen_now(server: asyncio.Server) -> None:
    """Make the kernel queue connections to ``server`` now; serve accepts them later.

    ``start_serving=False`` leaves the sockets bound but not listening, and a
    client would be refused while the helpers start. Listening at once, the
    connections wait in the backlog and get their greeting when serve starts
    serving: a client waits a moment instead of failing. ``listen`` is done on
    a duplicate of each descriptor (asyncio's socket wrapper has no
    ``listen``); the listening state belongs to the socket, not the descriptor.
    """
    for wrapped in server.sockets:
        duplicate = socket.socket(fileno=os.dup(wrapped.fileno()))
        try:
            duplicate.listen(LISTEN_BACKLOG)
        finally:
            duplicate.close()


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by an earlier run; refuse to remove anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"server.unix_socket: {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"server.unix_socket: {path} exists and is not a socket")
    os.unlink(path)


def _drop_privileges(queue: Queue, log: Any) -> None:
    """Started as root: become the owner of the queue (after binding, before serving)."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(queue.dir("queue"))
    except OSError:
        return
    if st.st_uid == 0:
        log(
            "running as root: the queue belongs to root (give it to a user to drop root)", "warning"
        )
        return
    import pwd

    try:
        entry = pwd.getpwuid(st.st_uid)
        name, gid = entry.pw_name, entry.pw_gid
    except KeyError:
        name, gid = str(st.st_uid), st.st_gid
    try:
        if name.isdigit():
            os.setgroups([])
        else:
            os.initgroups(name, gid)
        os.setgid(gid)
        os.setuid(st.st_uid)
    except OSError as exc:
        raise errors.PermissionDeniedError(
            f"cannot become the queue owner {name}: {exc.strerror or exc}"
        ) from None
    log(f"running as {name} (uid {st.st_uid}), the owner of the queue", "info")


def _quiet_libraries(logger: ServerLogger) -> None:
    """aiosmtpd logs every command at info and client mistakes as warnings: not ours to print."""
    mail = logging.getLogger("mail.log")
    mail.addHandler(logging.NullHandler())
    mail.propagate = False
    mail.setLevel(logging.CRITICAL)


def serve_main(config_path: str | None, io: Streams) -> int:
    """``pysendmail serve [-C FILE]``: run until SIGTERM; 0 after a clean stop."""
    started = time.monotonic()
    loaded = load(config_path, io.environ)
    settings = loaded.settings
    settings.need_relays()
    metrics = Metrics()
    target = settings.log.target
    if target == "auto":
        target = "stdout"  # a service's log is its standard output (containers, systemd)
    logger = ServerLogger(
        target,
        settings.log.format,
        settings.log.facility,
        metrics=metrics,
        level=settings.log.level,
        stream=io.stderr,
    )
    if target == "stdout":
        logger.stream = io.stdout
    _quiet_libraries(logger)
    queue = Queue(settings.general.queue_dir)
    for change in queue.ensure():
        logger.line(f"queue: {change}")
    app = App(config_path, io.environ, loaded, logger, metrics)
    status = asyncio.run(app.run())
    logger.line(f"uptime {time.monotonic() - started:.1f}s", "debug")
    return status
