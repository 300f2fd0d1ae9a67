"""Helpers shared by the deploy tests: start `knowd serve`, read its banner, probe its HTTP side.

Debian's /usr/bin/python3, standard library only (the manifest checker also uses python3-yaml).
"""

import http.client
import os
import re
import select
import signal
import subprocess
import sys
import time

LISTENING = re.compile(r"^knowd: listening on (\S+) \(grpc\)(?:, (\S+) \(http\))?$")


class Failure(Exception):
    """A check failed: the message says what was expected and what was found."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def clean_env(extra=None):
    """The environment without KNOWD_* settings, so only what the test gives reaches the daemon."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNOWD_")}
    env.update(extra or {})
    return env


class Daemon:
    """A started `knowd serve`: its process, banner lines, addresses and the log (stderr)."""

    def __init__(self, argv, log_path, env=None, cwd=None, timeout=120):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     cwd=cwd)
        self.banner = []
        self.grpc = self.http = None
        deadline = time.monotonic() + timeout
        buffered = b""
        while self.grpc is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise Failure(f"no 'knowd: listening on' line within {timeout} s; log:\n"
                              + self.log_text())
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                code = self.proc.wait()
                raise Failure(f"knowd serve exited {code} before listening; log:\n"
                              + self.log_text())
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.banner.append(text)
                match = LISTENING.match(text)
                if match:
                    self.grpc, self.http = match.group(1), match.group(2)
        # The two lines after "listening" (model, memory bank) follow at once.
        while len(self.banner) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                self.banner += [line.decode(errors="replace") for line in lines]

    def log_text(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def banner_value(self, prefix):
        """The rest of the banner line starting with `knowd: <prefix> `."""
        for line in self.banner:
            if line.startswith(f"knowd: {prefix} "):
                return line[len(f"knowd: {prefix} "):]
        raise Failure(f"no 'knowd: {prefix}' line in the banner: {self.banner}")

    def terminate(self, timeout):
        """SIGTERM, then the exit code (None if it did not exit within `timeout`)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def http_get(address, path, timeout=5.0):
    """(status, body) of GET http://address/path."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def wait_status(address, path, status, timeout=60.0):
    """Polls GET path until it answers `status`; the body. Fails with the last answer seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            got, body = http_get(address, path)
            if got == status:
                return body
            last = f"HTTP {got}: {body[:200]}"
        except OSError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise Failure(f"GET {path} on {address} did not answer {status} within {timeout} s "
                  f"(last: {last})")


def metric(text, name):
    """The value of an unlabelled Prometheus sample `name` in /metrics text."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    check(match is not None, f"/metrics has no sample {name}")
    return float(match.group(1))


def run(argv, **kwargs):
    """Runs a command, failing with its output when it exits non-zero; its stdout."""
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise Failure(f"{' '.join(map(str, argv))} exited {done.returncode}:\n"
                      f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main(body):
    """Runs body(); prints FAIL with the reason and exits 1 on a Failure."""
    try:
        body()
    except Failure as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    print("PASS", flush=True)


if __name__ == "__main__":
    # `deploy_util.py get ADDRESS PATH`: prints the status and body (run inside another network
    # namespace by the image test, through nsenter).
    if len(sys.argv) == 4 and sys.argv[1] == "get":
        got, text = http_get(sys.argv[2], sys.argv[3])
        print(got)
        print(text, end="")
    else:
        sys.exit("usage: deploy_util.py get ADDRESS PATH")
