#!/usr/bin/python3
"""Runs every snippet of docs/rag.md against the real daemon, in the order they appear.

A fenced block whose info string is `LANG rag-serve` starts the daemon: it is run by bash in the
background (KNOWD_LISTEN and KNOWD_HTTP_LISTEN set to free loopback ports, which the snippets
read as KNOWD_GRPC and KNOWD_HTTP) and stopped with SIGTERM at the end. Every other block but
```text ones must be `LANG rag-test` (sh, python or js): it is run to completion and must exit 0;
when the next block is a ```text block, its lines (but "...") must appear in the snippet's output,
in order. Snippets run in a scratch
directory that looks like a checkout: every top-level entry of the repository is linked there,
`build` being the build directory, so `build/daemon/knowd` and `tests/data/...` work as written.
JavaScript snippets import @knowd/client and client/js's npm packages.

usage: run_rag_doc.py REPO BUILD_DIR
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def blocks(markdown):
    """[(lang, tag, code, expected_output_lines or None)] of the tagged blocks, in order."""
    found = [(m.group(1).split(), m.group(2), m.start(), m.end()) for m in BLOCK.finditer(markdown)]
    out = []
    for i, (info, code, _, end) in enumerate(found):
        if info == ["text"]:
            continue
        # Every other block is a snippet, and every snippet is run.
        assert len(info) == 2 and info[1] in ("rag-test", "rag-serve"), \
            f"a block of docs/rag.md is neither ```text nor tagged rag-test or rag-serve: {info}"

        expected = None
        if i + 1 < len(found) and found[i + 1][0] == ["text"]:
            between = markdown[end:found[i + 1][2]]
            if not between.strip():
                expected = [l for l in found[i + 1][1].splitlines() if l.strip() and l.strip() != "..."]
        out.append((info[0], info[1], code, expected))
    return out


def scratch_checkout(repo, build):
    work = tempfile.mkdtemp(prefix="knowd-rag-doc-")
    for entry in os.listdir(repo):
        if entry.startswith(".") or entry.startswith("build"):
            continue
        os.symlink(os.path.join(repo, entry), os.path.join(work, entry))
    os.symlink(build, os.path.join(work, "build"))
    # node_modules for the JavaScript snippets: client/js's packages and @knowd/client itself.
    js = os.path.join(repo, "client", "js")
    modules = os.path.join(work, "node_modules")
    os.mkdir(modules)
    for entry in os.listdir(os.path.join(js, "node_modules")):
        if not entry.startswith("."):
            os.symlink(os.path.join(js, "node_modules", entry), os.path.join(modules, entry))
    os.makedirs(os.path.join(modules, "@knowd"), exist_ok=True)
    os.symlink(js, os.path.join(modules, "@knowd", "client"))
    return work


def main():
    repo, build = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    with open(os.path.join(repo, "docs", "rag.md"), encoding="utf-8") as f:
        snippets = blocks(f.read())
    assert any(s[1] == "rag-serve" for s in snippets), "docs/rag.md starts no daemon"
    assert sum(s[1] == "rag-test" for s in snippets) >= 5, "docs/rag.md has too few snippets"
    work = scratch_checkout(repo, build)
    env = dict(os.environ)
    env.update({
        "KNOWD_LISTEN": "127.0.0.1:0",
        "KNOWD_HTTP_LISTEN": "127.0.0.1:0",
        "PYTHONPATH": f"{repo}/client/python:{build}/client/python",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    daemon = None
    failures = 0
    try:
        for n, (lang, tag, code, expected) in enumerate(snippets, 1):
            label = f"snippet {n} ({lang} {tag})"
            if tag == "rag-serve":
                log = open(os.path.join(work, "knowd.log"), "wb")
                daemon = subprocess.Popen(["bash", "-c", code], cwd=work, env=env,
                                          stdout=subprocess.PIPE, stderr=log,
                                          start_new_session=True)
                deadline = time.monotonic() + 120
                for raw in daemon.stdout:
                    m = re.match(r"knowd: listening on (\S+) \(grpc\), (\S+) \(http\)", raw.decode())
                    if m:
                        env["KNOWD_GRPC"], env["KNOWD_HTTP"] = m.group(1), m.group(2)
                        break
                    if time.monotonic() > deadline:
                        break
                # The rest of its stdout is drained so the daemon never blocks on it.
                threading.Thread(target=daemon.stdout.read, daemon=True).start()
                if "KNOWD_GRPC" not in env:
                    print(f"FAIL {label}: the daemon did not start", flush=True)
                    return 1
                print(f"ok   {label}: knowd on {env['KNOWD_GRPC']} (grpc), {env['KNOWD_HTTP']} (http)",
                      flush=True)
                continue
            if lang in ("sh", "bash", "console"):
                command = ["bash", "-euo", "pipefail", "-c", code]
            elif lang == "python":
                command = ["/usr/bin/python3", "-c", code]
            elif lang in ("js", "javascript", "mjs"):
                path = os.path.join(work, f"snippet-{n}.mjs")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(code)
                command = ["node", path]
            else:
                print(f"FAIL {label}: no runner for {lang}", flush=True)
                failures += 1
                continue
            started = time.monotonic()
            result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True,
                                    timeout=300)
            took = time.monotonic() - started
            output = result.stdout.splitlines()
            problem = None
            if result.returncode != 0:
                problem = f"exit {result.returncode}"
            elif expected is not None:
                at = 0
                for line in expected:
                    while at < len(output) and output[at].rstrip() != line.rstrip():
                        at += 1
                    if at == len(output):
                        problem = f"output lacks the documented line {line!r}"
                        break
                    at += 1
            print(f"{'FAIL' if problem else 'ok  '} {label} in {took:.1f} s"
                  f"{' (output as documented)' if expected and not problem else ''}"
                  f"{': ' + problem if problem else ''}", flush=True)
            for line in output:
                print(f"     | {line}")
            if problem:
                failures += 1
                print("--- stderr\n" + result.stderr, flush=True)
    finally:
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    os.killpg(daemon.pid, 0)
                except ProcessLookupError:
                    break
                daemon.poll()
                time.sleep(0.1)
            else:
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        if failures:
            with open(os.path.join(work, "knowd.log"), encoding="utf-8", errors="replace") as f:
                print("--- knowd.log\n" + f.read()[-4000:])
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(snippets)} snippets, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
