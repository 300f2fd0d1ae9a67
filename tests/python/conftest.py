"""The real `knowd serve` on loopback for the Python tests (REST API and the Python client).

ctest (tests/python/CMakeLists.txt) runs pytest with Debian's /usr/bin/python3 and sets
KNOWD_BINARY, KNOWD_MODEL, KNOWD_WORLD and PYTHONPATH (client/python and the generated stubs).
One daemon serves a test session: free loopback ports, a fresh data directory, a tokens file with
an admin, a team-a reader and a team-a writer, and --max-message-bytes 262144 so a 413 is cheap.
"""
import http.client as http_client
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set (ctest sets it: tests/python/CMakeLists.txt)")
    return value


ADMIN = "admin-token"
READER = "team-a-reader"
WRITER = "team-a-writer"
TOKENS = [
    {"token": ADMIN, "namespaces": ["*"], "roles": ["admin"]},
    {"token": READER, "namespaces": ["team-a"], "roles": ["read"]},
    {"token": WRITER, "namespaces": ["team-a"], "roles": ["read", "write"]},
]
MAX_MESSAGE_BYTES = 262144


def world_passages():
    with open(os.path.join(env("KNOWD_WORLD"), "passages.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def world_questions():
    with open(os.path.join(env("KNOWD_WORLD"), "questions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Daemon:
    """`knowd serve` as a child process; its stderr goes to <dir>/knowd.log."""

    def __init__(self, directory, extra_args=()):
        tokens = os.path.join(directory, "tokens.json")
        with open(tokens, "w") as f:
            json.dump(TOKENS, f)
        self.log_path = os.path.join(directory, "knowd.log")
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [env("KNOWD_BINARY"), "serve", "--listen", "127.0.0.1:0", "--http-listen",
             "127.0.0.1:0", "--model", env("KNOWD_MODEL"), "--data-dir",
             os.path.join(directory, "data"), "--tokens-file", tokens, "--max-message-bytes",
             str(MAX_MESSAGE_BYTES), *extra_args],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL)
        found = {}

        def read():
            for raw in self.process.stdout:
                m = re.match(r"knowd: listening on (\S+) \(grpc\), (\S+) \(http\)", raw.decode())
                if m and not found:
                    found["grpc"], found["http"] = m.group(1), m.group(2)
            # stdout is drained to the end so the daemon never blocks on it.

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not found:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"knowd did not start:\n{self.log()}")
            time.sleep(0.05)
        self.grpc, self.http = found["grpc"], found["http"]

    def log(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGTERM; returns the exit code (0 after a clean drain)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    d = Daemon(str(tmp_path_factory.mktemp("knowd")))
    yield d
    code = d.stop()
    assert code == 0, f"knowd exited {code}:\n{d.log()}"


class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None

    def lines(self):
        """An NDJSON body, one object per line."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


def http(target, method, path, body=None, token=None, content_type="application/json"):
    """One HTTP request to the daemon; `body` a dict/list (JSON), str or bytes."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {}
    if body is not None:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    host, port = target.rsplit(":", 1)
    conn = http_client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return Reply(r.status, dict(r.getheaders()), r.read().decode("utf-8"))
    finally:
        conn.close()


def expect_error(reply, status, code_name):
    """An error body of the REST API: {"error": {"code": <HTTP status>, "message", "status"}}."""
    assert reply.status == status, reply.body
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    assert set(reply.json) == {"error"}, reply.body
    error = reply.json["error"]
    assert error["code"] == status, reply.body
    assert error["status"] == code_name, reply.body
    assert isinstance(error["message"], str) and error["message"], reply.body
    return error["message"]
