#!/usr/bin/python3
"""The container image, built without a registry and run as a container would run it.

  image_test.py --deb-dir DIR --version V --source-dir REPO --work DIR

deploy/container/build-rootfs builds the image from Debian's archive (mmdebstrap) with the .deb
of the package_deb fixture, as an OCI layout (umoci). Its config must say what
deploy/container/Dockerfile says (user, environment, entrypoint, volume, ports, working
directory). `umoci unpack` then makes the runtime bundle, and its process runs as the bundle's
config says — same argv, environment, user and working directory — in new mount, PID and
network namespaces: PID 1, a read-only root (Kubernetes' readOnlyRootFilesystem), /tmp a
tmpfs, a fresh host directory as the /var/lib/knowd volume, listening on 0.0.0.0:7070 and
:7071 of its own loopback. /readyz and /healthz must answer, the image's own knowctl must
ingest and count a document, SIGTERM to PID 1 must end it with exit 0, and the bank must be in
the volume, owned by the image's user. Needs root (namespaces, mmdebstrap's root mode) and
Debian's archive: exit 77 (skipped) when not root.
"""

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_util import Daemon, check, main, run  # noqa: E402

UTIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "deploy_util.py")

# Run inside `unshare --mount --pid --net --fork`: what a container runtime sets up.
CONTAINER_SH = r"""
set -e
root=$1 volume=$2 uid=$3 gid=$4 cwd=$5
shift 5
ip link set lo up
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --bind "$volume" "$root/var/lib/knowd"
exec chroot --userspec="$uid:$gid" --groups="$gid" "$root" /usr/bin/env -i --chdir="$cwd" "$@"
"""


def dockerfile_runtime(path):
    """USER, ENV, ENTRYPOINT, VOLUME, EXPOSE, WORKDIR of the Dockerfile's last stage."""
    text = open(path).read().replace("\\\n", " ")
    stage = text[text.rindex("\nFROM "):]
    out = {"env": {}, "expose": set()}
    for line in stage.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "USER":
            out["user"] = rest.strip()
        elif word == "WORKDIR":
            out["workdir"] = rest.strip()
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                out["env"][key] = value
        elif word == "ENTRYPOINT":
            out["entrypoint"] = json.loads(rest)
        elif word == "VOLUME":
            out["volumes"] = set(json.loads(rest))
        elif word == "EXPOSE":
            out["expose"] |= set(rest.split())
    return out


def image_config(layout, ref):
    """The OCI image config of `ref` in an OCI layout."""
    def blob(digest):
        algorithm, _, hexdigest = digest.partition(":")
        with open(os.path.join(layout, "blobs", algorithm, hexdigest)) as f:
            return json.load(f)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    (manifest,) = [m for m in index["manifests"]
                   if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
    return blob(blob(manifest["digest"])["config"]["digest"])["config"]


def children(pid):
    found = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        found += [int(c) for c in open(task).read().split()]
    return found


def body(a):
    # The CPU image: knowd's package alone (a CUDA build also made knowd-cuda, which it leaves
    # out), so knowd must run where no CUDA runtime is installed.
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True,
                          text=True).stdout.strip()
    deb = [os.path.join(a.deb_dir, f"knowd_{a.version}_{arch}.deb")]
    check(os.path.isfile(deb[0]), f"no {deb[0]} (found {glob.glob(a.deb_dir + '/*.deb')})")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    image = a.image or os.path.join(a.work, "image")
    if not a.image:
        start = time.monotonic()
        done = subprocess.run([os.path.join(a.source_dir, "deploy/container/build-rootfs"),
                               "--deb", deb[0], "--out", image], capture_output=True, text=True)
        with open(os.path.join(a.work, "build-rootfs.log"), "w") as f:
            f.write(done.stdout + done.stderr)
        check(done.returncode == 0, f"build-rootfs exited {done.returncode}:\n"
                                    f"{(done.stdout + done.stderr)[-4000:]}")
        print(f"{done.stdout.strip().splitlines()[-1]} in {time.monotonic() - start:.0f} s")

    # The image says what the Dockerfile says.
    config = image_config(os.path.join(image, "oci"), a.version)
    docker = dockerfile_runtime(os.path.join(a.source_dir, "deploy/container/Dockerfile"))
    env = dict(item.partition("=")[::2] for item in config.get("Env", []))
    check(config.get("User") == docker["user"],
          f"image user {config.get('User')} vs Dockerfile USER {docker['user']}")
    check(config.get("Entrypoint") == docker["entrypoint"] and not config.get("Cmd"),
          f"image entrypoint {config.get('Entrypoint')} {config.get('Cmd')} vs {docker['entrypoint']}")
    check(config.get("WorkingDir") == docker["workdir"], f"image WorkingDir {config.get('WorkingDir')}")
    check(set(config.get("Volumes", {})) == docker["volumes"], f"image volumes {config.get('Volumes')}")
    check(set(config.get("ExposedPorts", {})) == docker["expose"],
          f"image ports {config.get('ExposedPorts')} vs EXPOSE {docker['expose']}")
    for key, value in docker["env"].items():
        check(env.get(key) == value, f"image env {key}={env.get(key)} vs Dockerfile {value}")
    print(f"image config = Dockerfile: user {config['User']}, entrypoint "
          f"{' '.join(config['Entrypoint'])}, volume {sorted(docker['volumes'])}, ports "
          f"{sorted(docker['expose'])}")

    # The runtime bundle, as a container runtime would make it.
    bundle = os.path.join(a.work, "bundle")
    run(["umoci", "unpack", "--image", f"{os.path.join(image, 'oci')}:{a.version}", bundle])
    with open(os.path.join(bundle, "config.json")) as f:
        process = json.load(f)["process"]
    rootfs = os.path.join(bundle, "rootfs")
    uid, gid = process["user"]["uid"], process["user"]["gid"]
    volume = os.path.join(a.work, "volume")
    os.makedirs(volume)
    os.chown(volume, uid, gid)
    os.chmod(volume, 0o700)

    argv = ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child",
            "--propagation", "private", "/bin/sh", "-c", CONTAINER_SH, "container", rootfs,
            volume, str(uid), str(gid), process.get("cwd", "/"), *process["env"],
            *process["args"]]
    daemon = Daemon(argv, os.path.join(a.work, "knowd.log"), env={"PATH": os.environ["PATH"]})
    try:
        check(daemon.grpc == env["KNOWD_LISTEN"] and daemon.http == env["KNOWD_HTTP_LISTEN"],
              f"the container listens on {daemon.grpc}, {daemon.http}")
        (pid,) = children(daemon.proc.pid)
        status = open(f"/proc/{pid}/status").read()
        check(re.search(r"^NSpid:\s+\d+\s+1$", status, re.MULTILINE),
              f"knowd is not PID 1 of its namespace: {re.findall(r'NSpid.*', status)}")
        check(re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.MULTILINE),
              f"knowd does not run as {uid}: {re.findall(r'Uid.*', status)}")
        model = daemon.banner_value("model").split(" (")[0]
        check(model == "/usr/lib/knowd/models/knowd-tiny", f"the image serves {model}")
        inside = ["nsenter", "--target", str(pid), "--net"]
        port = env["KNOWD_HTTP_LISTEN"].rsplit(":", 1)[1]

        def get(path):
            out = run([*inside, "/usr/bin/python3", UTIL, "get", f"127.0.0.1:{port}", path])
            code, _, text = out.partition("\n")
            return int(code), text

        deadline = time.monotonic() + 60
        while get("/readyz")[0] != 200:
            check(time.monotonic() < deadline, "/readyz did not answer 200 within 60 s")
            time.sleep(0.5)
        check(get("/healthz")[0] == 200, "/healthz is not 200")
        knowctl = [*inside, "chroot", f"--userspec={uid}:{gid}", rootfs, "/usr/bin/knowctl",
                   "--server", "127.0.0.1:" + env["KNOWD_LISTEN"].rsplit(":", 1)[1]]
        ack = json.loads(run([*knowctl, "ingest", "-", "--json"],
                             input="Orvan Tesk keeps the lighthouse of Miravel.\n"))
        check(ack["id"] == "stdin" and ack["error_code"] == 0 and ack["passages"] >= 1,
              f"ingest ack {ack}")
        stats = json.loads(run([*knowctl, "stats", "--json"]))
        check(stats["documents"] == "1" and stats["version"] == a.version, f"stats {stats}")
        metrics = get("/metrics")[1]
        check(re.search(r"^knowd_bank_documents 1$", metrics, re.MULTILINE),
              "/metrics does not count the document")
        print(f"container: knowd is PID 1 as uid {uid} on a read-only root, serving {model} "
              f"on {daemon.grpc} and {daemon.http}; /readyz and /healthz 200; the image's "
              f"knowctl ingested 1 document ({stats['passages']} passages)")
        # SIGTERM to PID 1, as `docker stop` or the kubelet send it.
        os.kill(pid, 15)
        code = daemon.proc.wait(timeout=40)
        check(code == 0, f"SIGTERM to PID 1: exit {code}; log:\n{daemon.log_text()}")
    finally:
        daemon.kill()
    owners = {(os.stat(p).st_uid, os.stat(p).st_gid)
              for p in glob.glob(os.path.join(volume, "**"), recursive=True)}
    check(len(os.listdir(volume)) > 0 and owners == {(uid, gid)},
          f"the volume holds {os.listdir(volume)} owned by {owners}")
    print(f"SIGTERM to PID 1: exit 0; the bank is in the volume ({len(os.listdir(volume))} "
          f"entries, owned by {uid}:{gid})")
    # The unpacked bundle and the tar (about 450 MB) go; the OCI layout stays for inspection.
    shutil.rmtree(bundle)
    if not a.image:
        os.remove(os.path.join(image, "rootfs.tar"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--deb-dir", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--image", help="an image build-rootfs made already (not rebuilt)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("SKIP: the image test needs root (namespaces, mmdebstrap's root mode)")
        sys.exit(77)
    main(lambda: body(args))
