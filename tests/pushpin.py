"""A private Pushpin (Debian's `pushpin` package) for the tests: its own config, routes, runtime
and log directories under a temp dir, on free ports, so several can run beside each other and
beside a system Pushpin.

    with Pushpin(tmp_path, [web_port]) as pushpin:
        httpx.get(f"{pushpin.base_url}/api/...")       # clients connect here
        pushpin.publish([{"channel": ..., "formats": {"http-stream": {"content": ...}}}])
        # or POST {"items": [...]} to f"{pushpin.publish_url}/publish/" (the GRIP control URL)

Notes on Debian's package (1.36): its /usr/lib/pushpin/internal.conf points the proxy at a
system-wide zurl (ipc:///var/run/zurl/) that is not running here, so the config below runs zurl as
one of Pushpin's own services and points the proxy at it. Every ZeroMQ socket is an ipc socket
in the run directory: the only TCP ports are the client port and the control port.
"""

import contextlib
import http.client
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from live import free_port

CONFIG = """\
[global]
include={{libdir}}/internal.conf
rundir={rundir}
ipc_prefix=pushpin-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port={host}:{port}
logdir={logdir}
log_level={log_level}
client_buffer_size=8192
client_maxconn={maxconn}
condure_bin=condure
zurl_bin=zurl

[proxy]
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out
routesfile=routes
debug={debug}
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key={sig_key}
upstream_key=
updates_check=off

[handler]
push_in_spec=ipc://{{rundir}}/{{ipc_prefix}}push-in
push_in_sub_specs=ipc://{{rundir}}/{{ipc_prefix}}push-in-sub
push_in_sub_connect=false
push_in_http_addr={host}
push_in_http_port={control_port}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=ipc://{{rundir}}/{{ipc_prefix}}command
message_rate={message_rate}
message_hwm={message_hwm}
message_wait={message_wait}
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"""

# ZeroMQ ipc paths must fit a Unix socket address (108 bytes with the NUL).
IPC_PATH_MAX = 100
LONGEST_IPC_NAME = "pushpin-condure-out-stream"
# Requests for this host go to the probe backend below, not to the web processes.
READY_HOST = "pushpin-ready"


def installed():
    return all(shutil.which(b) for b in ("pushpin", "condure", "zurl"))


class _Probe(BaseHTTPRequestHandler):
    """Holds every request as a GRIP stream on the channel named by its path."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ready\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", self.path.strip("/"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Pushpin:
    """Pushpin in front of the web processes listening on `backends` (ports, or "host:port").
    Pushpin does not balance between a route's targets: it uses the first that accepts the
    connection, the others are failovers."""

    def __init__(self, tmp, backends, *, host="127.0.0.1", sig_key=None, debug=True,
                 log_level=2, maxconn=10_000, message_wait=5000, message_rate=0,
                 message_hwm=25000):  # fmt: skip
        self.dir = Path(tmp)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.backends = [b if ":" in str(b) else f"127.0.0.1:{b}" for b in backends]
        self.sig_key = sig_key or secrets.token_urlsafe(24)
        self.debug, self.log_level, self.maxconn = debug, log_level, maxconn
        self.message_wait = message_wait  # ms an out-of-order publish waits for the gap
        # deliveries (item x stream) per second, and queued at most, beyond which they drop.
        # 0 (the default): no rate limit. Any positive rate stalls delivery under a steady
        # stream of publishes: Pushpin 1.36's rate limiter (src/handler/ratelimiter.cpp) sends
        # queued deliveries from a timer (every 25 ms at rates >= 40/s) which every publish
        # restarts (QTimer::setInterval on an active timer), so publishes less than 25 ms apart
        # (> 40 a second, any channels) hold every delivery until they pause.
        self.message_rate, self.message_hwm = message_rate, message_hwm
        self.port = self.control_port = None
        self.process = None
        self._stopped = False
        self._probe = None
        self._probes = itertools.count()
        self._short_rundir = None

    @property
    def base_url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def publish_url(self):
        """The GRIP control URL (GRIP_URL points here); items are POSTed to <it>/publish/."""
        return f"http://{self.host}:{self.control_port}"

    @property
    def grip_url(self):
        """GRIP_URL for the web processes, with the key that verifies Pushpin's Grip-Sig (the
        settings refuse a GRIP_URL without one)."""
        return f"{self.publish_url}?verify-iss=pushpin&verify-key={self.sig_key}"

    def _rundir(self):
        rundir = self.dir / "run"
        if len(f"{rundir}/{LONGEST_IPC_NAME}") > IPC_PATH_MAX:
            self._short_rundir = tempfile.mkdtemp(prefix="pushpin-")
            rundir = Path(self._short_rundir)
        rundir.mkdir(exist_ok=True)
        return rundir

    def write_config(self):
        self.port = free_port(self.host)
        self.control_port = free_port(self.host)
        while self.control_port == self.port:
            self.control_port = free_port(self.host)
        (self.dir / "log").mkdir(exist_ok=True)
        config = CONFIG.format(
            rundir=self._rundir(),
            logdir=self.dir / "log",
            host=self.host,
            port=self.port,
            control_port=self.control_port,
            log_level=self.log_level,
            maxconn=self.maxconn,
            debug=str(self.debug).lower(),
            sig_key=self.sig_key,
            message_wait=self.message_wait,
            message_rate=self.message_rate,
            message_hwm=self.message_hwm,
        )
        (self.dir / "pushpin.conf").write_text(config)
        probe = f"127.0.0.1:{self._probe.server_port}"
        routes = f"{READY_HOST} {probe}\n* {' '.join(self.backends)}\n"
        (self.dir / "routes").write_text(routes)
        return self.dir / "pushpin.conf"

    def start(self, timeout=20):
        if not installed():
            raise RuntimeError("pushpin is not installed: run bin/services pushpin")
        self._probe = ThreadingHTTPServer(("127.0.0.1", 0), _Probe)
        self._probe.daemon_threads = True
        threading.Thread(target=self._probe.serve_forever, daemon=True).start()
        config = self.write_config()
        out = open(self.dir / "pushpin.out", "ab")  # noqa: SIM115 - lives as long as the process
        command = ["pushpin", "--config", str(config)]
        if shutil.which("setpriv"):  # util-linux: SIGTERM when this process dies, so a killed
            # test run leaves no Pushpin behind (the runner then stops its services)
            command = ["setpriv", "--pdeathsig", "TERM", *command]
        self._stopped = False
        self.process = subprocess.Popen(
            command,
            cwd=self.dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() can end all of it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"pushpin exited ({self.process.returncode}): {self.output()}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pushpin did not start within {timeout} s: {self.output()}")

    def _ready(self):
        """A held stream works end to end: accepted through the proxy and the handler, then
        closed by a publish. Right after a start, requests can fail ("Accept service
        unavailable") or hang while the ZeroMQ sockets between the services connect."""
        channel = f"{READY_HOST}-{next(self._probes)}"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=1)
        try:
            conn.request("GET", f"/{channel}", headers={"Host": READY_HOST})
            response = conn.getresponse()
            if response.status != 200 or response.read1(64) != b"ready\n":
                return False
            time.sleep(0.05)  # the handler subscribes the stream right after its first bytes
            self.publish([{"channel": channel, "formats": {"http-stream": {"action": "close"}}}])
            response.read()  # ends when the close arrives; times out otherwise
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def publish(self, items, timeout=5):
        """POST items to the control API; returns its answer ("Published")."""
        request = urllib.request.Request(
            f"{self.publish_url}/publish/",
            data=json.dumps({"items": items}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()

    def pids(self):
        """The runner's pid and its services' (condure, zurl, pushpin-proxy, pushpin-handler)."""
        if not self.process or self.process.poll() is not None:
            return []
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def output(self):
        parts = []
        for path in [self.dir / "pushpin.out", *sorted((self.dir / "log").glob("*.log"))]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def stop(self, timeout=10):
        if self.process and not self._stopped:
            self._stopped = True
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # the runner stops its services
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout)
            with contextlib.suppress(ProcessLookupError):  # what is left of its process group
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._probe:
            self._probe.shutdown()
            self._probe.server_close()
            self._probe = None
        if self._short_rundir:
            shutil.rmtree(self._short_rundir, ignore_errors=True)
            self._short_rundir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
