"""muslind: the host agent.

Runs several services in threads that share one stop event:
- docker: Docker's remote NetworkDriver + IpamDriver on /run/docker/plugins/muslin.sock;
- agent: the CNI fast path (framings in cni/server.py) on /run/muslin/muslind.sock;
- cluster: the multi-host agent for one cluster network (with --cluster-store and
  --cluster-network): subnet lease, peers, routes/FDB/BIRD reconciled (control/agent.py);
- dns: the resolver of Muslin's networks on port 53 of each bridge network's gateway
  (dns/server.py), fed from the store (control/dns_feed.py); its sockets are handed over
  to the next muslind across a restart (dns/handover.py);
- reconcile: periodic orphan cleanup and Docker DOCKER-USER rules;
- metrics (with --metrics-address): Prometheus text at /metrics (control/metrics.py) and the
  topology page at /topology (control/topology.py), read-only HTTP (control/web.py);
- topology: with a cluster agent, this host's networks and sandboxes published in the
  cluster store, so every host's topology shows the whole cluster.
SIGHUP re-reads the upstream resolvers and reloads the name table. SIGTERM/SIGINT stop everything and remove the sockets (the cluster agent keeps its lease
and kernel state, so traffic goes on; with --leave it gives them back). SIGUSR1: leave
the cluster network and stop. Logs go to stderr.

The settings (flags, environment, config file) are parsed by cli/muslind.py from the one
table in control/settings.py; `serve(args)` runs with their values as attributes. Under
systemd: READY=1 once every socket answers a real request (control/systemd.py), the CNI
socket systemd passes (socket activation) is used as it is and left in place at the end.
A new service: a class with name/start/stop here, one line in service_factories, and its
settings in control/settings.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socketserver
import threading
from typing import Any, Callable, Protocol

from muslin.control import systemd
from muslin.control.settings import DEFAULT_AGENT_SOCKET, DEFAULT_DOCKER_SOCKET, etcd_options  # noqa: F401
from muslin.model.errors import MuslinError

log = logging.getLogger("muslind")


class Service(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Context:
    """What services share: parsed args, the stop event, and a lazily built control layer."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.stop = threading.Event()
        self.exit_status = 0  # set by a service that fails fatally
        self.error = ""  # and its one line
        self.inherited: dict[str, Any] = {}  # sockets systemd passed, by path (socket activation)
        self.cluster_agent: Any = None  # the cluster service's Agent, when it runs
        self._muslin: Any = None
        self._lock = threading.Lock()

    @property
    def muslin(self) -> Any:
        with self._lock:
            if self._muslin is None:
                from muslin.control.service import Muslin
                from muslin.store import open_store

                store = open_store(self.args.store, etcd_options(self.args)) if self.args.store else None
                self._muslin = Muslin(store=store, state_dir=self.args.state_dir)
            return self._muslin

    def local_store(self) -> Any:
        """Another connection to this host's store (for a service's own thread)."""
        from muslin.store import open_store

        a = self.args
        return open_store(a.store, etcd_options(a)) if a.store else open_store(str(self.muslin.state_dir))

    def close(self) -> None:
        if self._muslin is not None:
            self._muslin.close()


class DockerService:
    name = "docker"

    def __init__(self, ctx: Context) -> None:
        from muslin.dataplane import hostnet
        from muslin.docker.driver import DockerDriver
        from muslin.docker.ipam import DockerIpam
        from muslin.docker.server import PluginServer, routes

        from muslin.docker.names import DockerNames

        m = ctx.muslin
        self.ctx = ctx
        self.driver = DockerDriver(m, link_exists=hostnet.link_exists, port_free=hostnet.port_free,
                                   on_networks_changed=self.sync_rules, host_routes=hostnet.host_routes)
        if ctx.args.docker_api:  # who each endpoint's container is (name, aliases), asked of dockerd
            self.driver.names = DockerNames(ctx.args.docker_api, lambda n, e, who: self.driver.named(n, e, who))
        self.ipam = DockerIpam(m.store, m.ipam, m.list_networks, hostnet.host_routes)
        self.server = PluginServer(ctx.args.docker_socket, routes(self.driver, self.ipam))
        self.thread: threading.Thread | None = None

    def sync_rules(self) -> None:
        try:
            self.ctx.muslin.sync_docker_user()
        except Exception as e:  # never fail a Docker call on this; the reconciler retries
            log.warning("DOCKER-USER rules: %s", " ".join(str(e).split()))

    def reconcile(self) -> None:
        self.driver.cleanup_orphans()
        self.sync_rules()
        try:
            self.driver.fill_names()
        except Exception as e:  # noqa: BLE001 - names are best effort
            log.debug("docker names: %s", e)

    def start(self) -> None:
        from muslin.docker.server import serve_in_thread

        self.reconcile()
        self.thread = serve_in_thread(self.server, "docker-plugin")
        log.info("Docker network+IPAM plugin 'muslin' on %s", self.server.path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.close()


class _AgentHandler(socketserver.StreamRequestHandler):
    """Requests in either framing (cni/server.py), one after the other, until the peer is done."""

    def handle(self) -> None:
        serve_one = self.server.serve_one  # type: ignore[attr-defined]
        try:
            while serve_one(self.rfile, self.wfile):
                pass
        except OSError as e:  # the plugin went away; nothing to answer
            log.debug("agent connection: %s", e)
        except Exception:  # never a traceback to the client: it sees the connection close (CNI code 11)
            log.exception("agent request failed")


class _AgentServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def warm_up() -> None:
    """Import and load now what the first request of each kind would (~100 ms), so that no
    CNI call pays it: the use-cases, the drivers, the kernel path, libnftables."""
    from muslin.control import endpoints, networks  # noqa: F401
    from muslin.dataplane import kernel, libnft  # noqa: F401
    from muslin.drivers.base import drivers

    drivers()
    libnft.available()


class AgentService:
    """The CNI fast path: muslin-cni forwards each request here (framing 1 or 2, cni/server.py)."""

    name = "agent"

    def __init__(self, ctx: Context) -> None:
        from muslin.cni import server
        from muslin.cni.server import serve_one
        from muslin.control.service import Muslin
        from muslin.control.timings import Timings
        from muslin.dataplane import nsexec
        from muslin.docker.server import prepare_socket_path

        nsexec.use_helper()  # work inside sandboxes goes to one persistent helper, no fork per call
        warm_up()
        self.timings = Muslin.default_timings or Timings()
        Muslin.default_timings = self.timings
        server.EXTRA["stats"] = self.stats
        if not ctx.args.store:  # `muslin policy apply|delete` forwarded (cli/fast.py); this host's store only
            from muslin.control import policy_agent

            server.EXTRA["policy"] = policy_agent.handler(
                ctx.muslin.state_dir, lambda: Muslin(store=ctx.local_store(), state_dir=ctx.muslin.state_dir))

        self.path = ctx.args.agent_socket
        passed = ctx.inherited.pop(self.path, None)  # socket activation: systemd's socket, left in place
        self.owned = passed is None
        if passed is None:
            prepare_socket_path(self.path)
            self.server = _AgentServer(self.path, _AgentHandler)
            os.chmod(self.path, 0o600)
        else:
            self.server = _AgentServer(self.path, _AgentHandler, bind_and_activate=False)
            self.server.socket.close()
            self.server.socket = passed
        self.server.serve_one = serve_one  # type: ignore[attr-defined]

    def stats(self, stdin: bytes) -> tuple[str, int]:
        """The phase timings so far ({"reset": true} on stdin: and start again)."""
        import json

        try:
            reset = bool(json.loads(stdin or b"{}").get("reset"))
        except (ValueError, AttributeError):
            reset = False
        return json.dumps(self.timings.snapshot(reset)), 0

    def start(self) -> None:
        from muslin.docker.server import serve_in_thread

        serve_in_thread(self.server, "cni-agent")
        log.info("CNI agent on %s%s", self.path, "" if self.owned else " (passed by systemd)")

    def stop(self) -> None:
        from muslin.docker.server import remove_socket

        self.server.shutdown()
        self.server.server_close()
        if self.owned:
            remove_socket(self.path)


class ClusterService:
    """The multi-host agent of one cluster network, on a thread sharing muslind's stop event."""

    name = "cluster"

    def __init__(self, ctx: Context) -> None:
        from pathlib import Path

        from muslin.control.agent import Agent
        from muslin.store import default_state_dir, open_store

        a = ctx.args
        self.ctx = ctx
        state_dir = Path(a.state_dir) if a.state_dir else default_state_dir()
        self.agent = Agent(open_store(a.cluster_store, etcd_options(a)), a.cluster_network, a.hostname, state_dir,
                           a.underlay_dev, a.underlay_ip, a.resync, log=logging.getLogger("muslin.agent").info)
        self.agent.leave_on_stop = a.leave
        ctx.cluster_agent = self.agent  # metrics (peers) and the topology publisher read it
        # `muslin cluster leave` finds the running agent through this file.
        self.pidfile = state_dir / "cluster" / f"{a.cluster_network}.agent.pid"
        self.thread = threading.Thread(target=self._run, name="cluster", daemon=True)

    def _run(self) -> None:
        try:
            self.agent.run(self.ctx.stop)
        except MuslinError as e:  # e.g. no subnet left: one line, and muslind exits with its status
            self.ctx.error = str(e)
            self.ctx.exit_status = e.exit_status
            self.ctx.stop.set()

    def leave(self) -> None:
        self.agent.leave_on_stop = True
        self.ctx.stop.set()
        self.agent.wake()

    def start(self) -> None:
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(os.getpid()))
        self.thread.start()
        self.names = self._publisher()
        self.members = self._service_members()
        log.info("cluster agent for %s as %s", self.agent.network, self.agent.hostname)

    def _service_members(self) -> Any:
        """Other hosts' endpoints as backends of this host's services (control/service_members.py)."""
        from muslin.control.service_members import RemoteMembers
        from muslin.store import open_store

        a = self.ctx.args
        rm = RemoteMembers(open_store(a.cluster_store, etcd_options(a)), self.ctx.muslin, self.agent.network,
                           self.agent.hostname, self.ctx.stop)
        rm.start()
        return rm

    def _publisher(self) -> Any:
        """This host's endpoints on the cluster network, published for the other hosts."""
        from muslin.control.cluster_names import EndpointPublisher
        from muslin.store import open_store

        a = self.ctx.args
        pub = EndpointPublisher(open_store(a.cluster_store, etcd_options(a)), self.ctx.local_store(),
                                self.agent.network, self.agent.hostname, lambda: self.agent.lease)
        pub.start()
        return pub

    def stop(self) -> None:
        self.ctx.stop.set()
        self.agent.wake()
        names = getattr(self, "names", None)
        if names is not None:
            names.stop()
        members = getattr(self, "members", None)
        if members is not None:
            members.join()
            members.cluster.close()
        if self.thread.is_alive():
            self.thread.join(timeout=60)
        self.agent.store.close()
        self.pidfile.unlink(missing_ok=True)


class DnsService:
    """DNS for Muslin's networks (dns/server.py), fed from the stores (control/dns_feed.py)."""

    name = "dns"

    def __init__(self, ctx: Context) -> None:
        from muslin.dns import handover
        from muslin.dns.server import DnsServer

        a = ctx.args
        self.ctx = ctx
        m = ctx.muslin
        self.owner_id = m.owner_id
        self.marker = m.state_dir / "dns.pid"  # muslin-cni gives containers this DNS while it exists
        self.server = DnsServer(a.dns_port, a.resolv_conf, adopt=lambda: handover.take(self.owner_id))
        self.stop_feeds = threading.Event()
        self.feeds: list[Any] = []

    def start(self) -> None:
        from muslin.control.dns_feed import ClusterFeed, LocalFeed
        from muslin.store import open_store

        a = self.ctx.args
        self.server.start()
        self.feeds.append(LocalFeed(self.ctx.local_store(), self.server.change, self.stop_feeds))
        if a.cluster_store:
            self.feeds.append(ClusterFeed(open_store(a.cluster_store, etcd_options(a)), self.server.change,
                                          self.stop_feeds, a.cluster_network, a.hostname))
        for f in self.feeds:
            f.start()
        self.feeds[0].loaded.wait(10)  # serve the names there are before saying ready
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{os.getpid()} {a.dns_port}\n")
        log.info("DNS on port %d of the bridge networks' gateways (upstream servers from %s)",
                 a.dns_port, a.resolv_conf)

    def reload(self) -> None:
        self.server.call(lambda: self.server.upstreams.reload(force=True))

    def stop(self) -> None:
        from muslin.dns import handover

        self.stop_feeds.set()
        socks = self.server.stop()
        for f in self.feeds:
            f.join()
            f.store.close()
        if socks and self.ctx.args.dns_handover > 0:
            pid = handover.hold(self.owner_id, socks, self.ctx.args.dns_handover)
            if pid:
                log.info("DNS sockets handed to holder %d for the next muslind", pid)
        else:
            pid = 0
        for sock in socks.values():
            sock.close()
        try:  # while a holder keeps the sockets, DNS is still this state dir's (the next muslind answers)
            if self.marker.read_text().split()[0] == str(os.getpid()):
                if pid:
                    self.marker.write_text(f"{pid} {self.ctx.args.dns_port}\n")
                else:
                    self.marker.unlink()
        except (OSError, IndexError):
            pass


class PolicyService:
    """Network policy of a cluster: the cluster store's policies and namespaces copied into
    this host's store, the firewall synced (control/policy_feed.py)."""

    name = "policy"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stop_feeds = threading.Event()
        self.feeds: list[Any] = []

    def start(self) -> None:
        from muslin.control.policy_feed import ObjectsFeed
        from muslin.control.service import Muslin
        from muslin.store import open_store

        a = self.ctx.args
        m = Muslin(store=self.ctx.local_store(), state_dir=self.ctx.muslin.state_dir)
        self.muslin = m
        # the other hosts' endpoints: the cluster service's copy (control/service_members.py)
        self.feeds = [ObjectsFeed(open_store(a.cluster_store, etcd_options(a)), m, self.stop_feeds)]
        for f in self.feeds:
            f.start()
        log.info("network policy follows the cluster store")

    def stop(self) -> None:
        self.stop_feeds.set()
        for f in self.feeds:
            f.join()
            f.store.close()
        if getattr(self, "muslin", None) is not None:
            self.muslin.close()


class ReaperService:
    """Retired links deleted in batches (control/reaper.py); first, what a muslind that died
    left retired."""

    name = "reaper"

    def __init__(self, ctx: Context) -> None:
        from muslin.control.reaper import Reaper
        from muslin.control.service import Muslin
        from muslin.control.timings import Timings

        Muslin.default_timings = Muslin.default_timings or Timings()  # before any Muslin is made
        self.ctx = ctx
        self.reaper = Reaper(linger=ctx.args.reap_delay)
        Muslin.default_reaper = self.reaper  # every Muslin of this process retires, then reaps here
        self.thread = threading.Thread(target=self.reaper.run, args=(ctx.stop,), name="reaper", daemon=True)

    def start(self) -> None:
        self.ctx.muslin.reap()  # the links and addresses of its state dir that a dead muslind left
        self.thread.start()

    def stop(self) -> None:
        self.ctx.stop.set()
        self.reaper.wake.set()  # it may sleep up to its interval (10 s) waiting for work
        if self.thread.is_alive():
            self.thread.join(timeout=30)


class MetricsService:
    """/metrics and /topology on --metrics-address. Made first: it listens to the events
    (muslin/events.py) before any store is opened or request served."""

    name = "metrics"

    def __init__(self, ctx: Context) -> None:
        from muslin.control import metrics
        from muslin.control.web import WebServer

        self.ctx = ctx
        self.metrics = metrics.Metrics()
        self.metrics.listen()
        self.metrics.sources.add(metrics.local_source(lambda: ctx.muslin))
        self.metrics.sources.add(self._cluster_rows)
        self._cluster_store: Any = None
        try:
            self.server = WebServer(ctx.args.metrics_address, {
                "/metrics": lambda: (metrics.CONTENT_TYPE, self.metrics.render()),
                "/topology": lambda: ("text/html; charset=utf-8", self._draw("html")),
                "/topology.svg": lambda: ("image/svg+xml", self._draw("svg")),
                "/topology.json": lambda: ("application/json", self._draw("json")),
                "/topology.dot": lambda: ("text/vnd.graphviz; charset=utf-8", self._draw("dot")),
                "/": lambda: ("text/html; charset=utf-8",
                              b'<!doctype html><a href="/metrics">/metrics</a> <a href="/topology">/topology</a>'),
            })
        except BaseException:
            self.metrics.close()
            raise

    def _cluster_rows(self) -> list[Any]:
        from muslin.control import metrics

        agent = getattr(self.ctx, "cluster_agent", None)
        return metrics.cluster_source(agent)() if agent is not None else []

    def topology(self) -> dict[str, Any]:
        from muslin.control import topology

        a = self.ctx.args
        if a.cluster_store and self._cluster_store is None:
            from muslin.store import open_store

            self._cluster_store = open_store(a.cluster_store, etcd_options(a))
        nets = [a.cluster_network] if a.cluster_network else None
        return topology.gather(self.ctx.muslin, a.hostname, self._cluster_store, nets)

    def _draw(self, fmt: str) -> bytes:
        import json

        from muslin.control import topology_render as r

        t = self.topology()
        text = {"html": r.to_html, "svg": r.to_svg, "dot": r.to_dot}.get(fmt)
        return (text(t) if text else json.dumps(t, indent=1)).encode()

    def start(self) -> None:
        self.server.start()
        log.info("metrics on %s/metrics, topology on %s/topology", self.server.url, self.server.url)

    def stop(self) -> None:
        self.server.stop()
        self.metrics.close()
        if self._cluster_store is not None:
            self._cluster_store.close()


class TopologyService:
    """This host's summary (networks, sandboxes) in the cluster store under its subnet
    lease, written when it changes (control/topology.py)."""

    name = "topology"

    def __init__(self, ctx: Context) -> None:
        from muslin.control.topology import Publisher

        self.ctx = ctx
        self.publisher: Any = None
        self.thread = threading.Thread(target=self._run, name="topology", daemon=True)
        self._publisher = Publisher

    def _run(self) -> None:
        while not self.ctx.stop.wait(2.0):
            agent = getattr(self.ctx, "cluster_agent", None)
            if agent is None:
                continue
            if self.publisher is None:
                self.publisher = self._publisher(lambda: self.ctx.muslin, agent)
            try:
                self.publisher.publish_once()
            except Exception as e:  # noqa: BLE001 - the store away: next round
                log.debug("topology publish: %s", e)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.ctx.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


class Reconciler:
    """Calls each `task` every `interval` seconds until stop (errors logged, never fatal)."""

    name = "reconcile"

    def __init__(self, ctx: Context, tasks: list[Callable[[], None]], interval: float) -> None:
        self.ctx, self.tasks, self.interval = ctx, tasks, interval
        self.thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def _run(self) -> None:
        import time

        from muslin import events

        while not self.ctx.stop.wait(self.interval):
            t0 = time.perf_counter()
            for task in self.tasks:
                try:
                    task()
                except Exception as e:
                    log.warning("reconcile: %s", " ".join(str(e).split()))
            events.emit("reconcile", loop="orphans", seconds=time.perf_counter() - t0)

    def start(self) -> None:
        if self.interval > 0 and self.tasks:
            self.thread.start()

    def stop(self) -> None:
        self.ctx.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def service_factories(ctx: Context) -> list[Callable[[], Any]]:
    """Constructors of the services to run, in start order (each may open a socket)."""
    factories: list[Callable[[], Any]] = []
    tasks: list[Callable[[], None]] = []

    def docker() -> DockerService:
        svc = DockerService(ctx)
        tasks.append(svc.reconcile)
        return svc

    def agent() -> Any:
        try:
            return AgentService(ctx)
        except ImportError as e:
            log.warning("CNI agent disabled: %s", e)
            return None

    if getattr(ctx.args, "metrics_address", ""):
        factories.append(lambda: MetricsService(ctx))  # first: it listens before anything is measured
    factories.append(lambda: ReaperService(ctx))  # then: every Muslin made later retires links
    if ctx.args.dns_port:  # early: it answers soon after a restart, and stops last (its sockets go to a holder)
        factories.append(lambda: DnsService(ctx))
    if ctx.args.cluster_store:
        factories.append(lambda: ClusterService(ctx))
        factories.append(lambda: TopologyService(ctx))
        factories.append(lambda: PolicyService(ctx))  # network policy across hosts
    if ctx.args.docker_socket:
        factories.append(docker)
    if ctx.args.agent_socket:
        factories.append(agent)
    factories.append(lambda: Reconciler(ctx, tasks, ctx.args.reconcile_interval))
    return factories


def probes(started: list[Any]) -> list[tuple[str, Callable[[], None]]]:
    """A real request per socket muslind serves (READY waits for each)."""
    out: list[tuple[str, Callable[[], None]]] = []
    for svc in started:
        if isinstance(svc, AgentService):
            out.append((f"the CNI agent socket {svc.path}", lambda p=svc.path: systemd.probe_agent(p)))
        elif isinstance(svc, DockerService):
            out.append((f"the Docker plugin socket {svc.server.path}",
                        lambda p=svc.server.path: systemd.probe_docker(p)))
    return out


def serve(args: Any) -> tuple[int, str]:
    """Run the services until a signal or a fatal error: (exit status, its one line or '')."""
    ctx = Context(args)
    ctx.inherited = systemd.listen_fds()
    started: list[Any] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: ctx.stop.set())

    def on_leave(*_: Any) -> None:
        for svc in started:
            if isinstance(svc, ClusterService):
                svc.leave()
        ctx.stop.set()

    signal.signal(signal.SIGUSR1, on_leave)

    def on_reload(*_: Any) -> None:
        for svc in started:
            if hasattr(svc, "reload"):
                svc.reload()

    signal.signal(signal.SIGHUP, on_reload)
    try:
        for make in service_factories(ctx):
            svc = make()
            if svc is None:
                continue
            started.append(svc)  # stop() undoes the constructor's socket even if start fails
            svc.start()
        for path, sock in ctx.inherited.items():
            log.warning("systemd passed a socket for %s, which no service uses; closing it", path)
            sock.close()
        systemd.wait_answering(probes(started))
        names = ", ".join(getattr(s, "name", "?") for s in started)
        systemd.notify("READY=1", f"STATUS=serving: {names}", f"MAINPID={os.getpid()}")
        log.info("muslind ready (pid %d): %s", os.getpid(), names)
        while not ctx.stop.wait(1.0):
            pass
        log.info("stopping")
        return ctx.exit_status, ctx.error
    except MuslinError as e:
        return e.exit_status, str(e)
    except Exception as e:
        log.debug("startup failed", exc_info=True)
        return 1, f"{type(e).__name__}: {' '.join(str(e).split())}"
    finally:
        ctx.stop.set()
        systemd.notify("STOPPING=1")
        for svc in reversed(started):
            try:
                svc.stop()
            except Exception as e:
                log.warning("stopping %s: %s", getattr(svc, "name", svc), e)
        ctx.close()


def main(argv: list[str] | None = None) -> None:
    """`python -m muslin.control.daemon` = `muslind` (cli/muslind.py parses the settings)."""
    from muslin.cli.muslind import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
