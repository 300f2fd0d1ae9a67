#!/usr/bin/python3
"""The Debian package (deploy/CMakeLists.txt): built by cpack, unpacked with dpkg -x, served.

  package_test.py build --config CPackConfig.cmake --out DIR [--cuda]   cpack -G DEB into DIR
  package_test.py serve --deb-dir DIR --version V --work DIR [--cuda-lib-dir DIR]

`build` (a fixture) expects knowd_<version>_<arch>.deb, and knowd-cuda_<version>_<arch>.deb
from a CUDA build. `serve` checks knowd's control fields (Depends names the Debian package of
every shared library the binaries load, so knowd links no CUDA library, which belongs to no
Debian package), the file list and conffiles, that the systemd unit, sysusers entry and sample
config agree, then starts the unpacked /usr/bin/knowd with the shipped config from an empty
directory (so the bundle it finds is the package's own), ingests and reads back a document with
the unpacked knowctl, and stops it with SIGTERM. From a CUDA build (--cuda-lib-dir: where its
CUDA runtime is) it checks knowd-cuda too: without it `knowd serve --backend cuda` says to
install it; unpacked beside knowd, the daemon loads the module from lib/knowd/backends.
"""

import argparse
import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_util import Daemon, Failure, check, clean_env, http_get, main, metric, run, wait_status  # noqa: E402

REQUIRED_PATHS = {
    "./usr/bin/knowctl": "file",
    "./usr/bin/knowd": "link ../lib/knowd/bin/knowd",
    "./usr/lib/knowd/bin/knowd": "file",
    "./usr/lib/knowd/models": "link ../../share/knowd/models",
    "./usr/share/knowd/models/knowd-tiny/config.json": "file",
    "./usr/share/knowd/models/knowd-tiny/model.safetensors": "file",
    "./usr/share/knowd/models/knowd-tiny/tokenizer.model": "file",
    "./usr/share/knowd/models/knowd-tiny/adapter/adapter.json": "file",
    "./usr/share/knowd/models/knowd-tiny/adapter/adapter.safetensors": "file",
    "./usr/lib/systemd/system/knowd.service": "file",
    "./usr/lib/sysusers.d/knowd.conf": "file",
    "./etc/knowd/knowd.json": "file",
}


def package_files(version, cuda):
    arch = run(["dpkg", "--print-architecture"]).strip()
    names = [f"knowd_{version}_{arch}.deb"]
    if cuda:
        names.append(f"knowd-cuda_{version}_{arch}.deb")
    return names


def build(args):
    shutil.rmtree(args.out, ignore_errors=True)
    start = time.monotonic()
    run([args.cpack, "-G", "DEB", "--config", args.config, "-B", args.out])
    debs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(args.out, "*.deb")))
    expected = sorted(package_files(args.version, args.cuda))
    check(debs == expected, f"cpack made {debs} in {args.out}, expected {expected}")
    for deb in debs:
        print(f"built {deb} ({os.path.getsize(os.path.join(args.out, deb))} bytes)")
    print(f"in {time.monotonic() - start:.1f} s")


def parse_unit(path):
    """The [Service] settings of a systemd unit: name -> value (last one wins)."""
    settings, section = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]":
                key, _, value = line.partition("=")
                settings[key] = value
    return settings


def library_packages(binaries, host_lib_dirs):
    """{library: (package, names it provides)} for the shared libraries the binaries name
    (DT_NEEDED: what dpkg-shlibdeps turns into Depends), from this machine's dpkg database.
    Libraries in host_lib_dirs (a CUDA toolkit installed without dpkg) may belong to no package:
    dpkg-shlibdeps leaves them out of Depends and the host must provide them; they are listed."""
    paths = {}
    for binary in binaries:
        ldd = run(["ldd", binary])
        resolved = dict(re.findall(r"^\s*(\S+) => (/\S+) \(", ldd, re.MULTILINE))
        for path in re.findall(r"^\s*(/\S+) \(", ldd, re.MULTILINE):  # the dynamic loader
            resolved[os.path.basename(path)] = path
        for needed in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                                 run(["readelf", "-d", binary])):
            check(needed in resolved, f"{binary} needs {needed}, which ldd does not find")
            paths[needed] = resolved[needed]
    # usrmerge: dpkg knows a library under the path its package ships, /lib or /usr/lib.
    candidates = {}
    for lib, path in paths.items():
        for p in {path, os.path.realpath(path)}:
            rest = p[len("/usr"):] if p.startswith("/usr/") else p
            candidates[rest] = candidates["/usr" + rest] = lib
    done = subprocess.run(["dpkg", "-S", *candidates], capture_output=True, text=True)
    owners = {}
    for line in done.stdout.splitlines():
        package, _, path = line.partition(": ")
        if path in candidates:
            owners[candidates[path]] = package.split(":")[0]
    allowed = [os.path.realpath(d) for d in host_lib_dirs]
    unowned = sorted(set(paths) - set(owners))
    host = [lib for lib in unowned
            if os.path.dirname(os.path.realpath(paths[lib])) in allowed]
    check(set(unowned) == set(host), f"{sorted(set(unowned) - set(host))} belong to no Debian "
          f"package (loaded from {[paths[lib] for lib in unowned]})")
    if host:
        print(f"not in Depends, from the host's {host_lib_dirs}: {host}")
    provides = {}
    for line in run(["dpkg-query", "-W", "-f", "${Package}\t${Provides}\n",
                     *sorted(set(owners.values()))]).splitlines():
        package, _, names = line.partition("\t")
        provides[package] = {re.split(r"[ (]", n.strip())[0] for n in names.split(",") if n.strip()}
    return {lib: (package, provides.get(package, set())) for lib, package in owners.items()}


def serve(args):
    cuda = bool(args.cuda_lib_dir)
    names = package_files(args.version, cuda)
    debs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(args.deb_dir, "*.deb")))
    check(debs == sorted(names), f"expected {names} in {args.deb_dir}, found {debs}")
    deb = os.path.join(args.deb_dir, names[0])
    arch = run(["dpkg", "--print-architecture"]).strip()

    fields = {name: run(["dpkg-deb", "-f", deb, name]).strip()
              for name in ("Package", "Version", "Architecture", "Depends")}
    check(fields["Package"] == "knowd", f"Package: {fields['Package']}")
    check(fields["Version"] == args.version, f"Version: {fields['Version']} != {args.version}")
    check(fields["Architecture"] == arch, f"Architecture: {fields['Architecture']} != {arch}")

    listing = {}
    for line in run(["dpkg-deb", "-c", deb]).splitlines():
        parts = line.split(None, 5)
        name, _, target = parts[5].partition(" -> ")
        listing[name] = ("link " + target) if line.startswith("l") else (
            "dir" if line.startswith("d") else "file")
    for path, kind in REQUIRED_PATHS.items():
        check(listing.get(path) == kind, f"{path}: expected {kind}, package has {listing.get(path)}")
    conffiles = run(["dpkg-deb", "-I", deb, "conffiles"]).split()
    check(conffiles == ["/etc/knowd/knowd.json"], f"conffiles: {conffiles}")
    for script in ("postinst", "postrm"):
        text = run(["dpkg-deb", "-I", deb, script])
        check(text.startswith("#!/bin/sh"), f"{script} is not a shell script")
    run(["sh", "-n", "-c", run(["dpkg-deb", "-I", deb, "postinst"])])

    shutil.rmtree(args.work, ignore_errors=True)
    root = os.path.join(args.work, "root")
    os.makedirs(root)
    run(["dpkg", "-x", deb, root])
    knowd = os.path.join(root, "usr/bin/knowd")
    knowctl = os.path.join(root, "usr/bin/knowctl")
    real_knowd = os.path.join(root, "usr/lib/knowd/bin/knowd")

    # Depends covers every shared library the binaries load.
    depends = {re.split(r"[ (]", alt.strip())[0]
               for item in fields["Depends"].split(",") for alt in item.split("|")}
    owners = library_packages([real_knowd, knowctl], [])
    # A library is covered when Depends names its package, a name that package provides (a
    # soname-like virtual only for that very library), or a package that depends on it
    # (libopenblas0: libopenblas0-pthread | libopenblas0-openmp | ...).
    wrappers = {}
    shown = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(depends)],
                           capture_output=True, text=True).stdout  # virtual names: no record
    for record in shown.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", record, re.MULTILINE)
        match = re.search(r"^Depends: (.*)$", record, re.MULTILINE)
        if name and match:
            wrappers[name.group(1)] = {re.split(r"[ (]", alt.strip())[0]
                                       for item in match.group(1).split(",")
                                       for alt in item.split("|")}

    def covered(lib, package, provided):
        return (package in depends
                or any(p in depends and (".so" not in p or p == lib) for p in provided)
                or any(package in wrapped for wrapped in wrappers.values()))

    missing = {lib: pkg for lib, (pkg, provided) in owners.items()
               if not covered(lib, pkg, provided)}
    check(not missing, f"Depends ({fields['Depends']}) lacks the packages of {missing}")
    print(f"Depends covers the {len(owners)} shared libraries knowd and knowctl name "
          f"({len({pkg for pkg, _ in owners.values()})} packages)")

    # The unit, the sysusers entry and the config agree with each other and with the package.
    unit = parse_unit(os.path.join(root, "usr/lib/systemd/system/knowd.service"))
    exec_start = unit["ExecStart"].split()
    check(exec_start[:2] == ["/usr/bin/knowd", "serve"], f"ExecStart: {unit['ExecStart']}")
    check(exec_start[2] == "--config" and len(exec_start) == 4, f"ExecStart: {unit['ExecStart']}")
    config_path = exec_start[3]
    check(os.path.isfile(root + config_path), f"ExecStart's config {config_path} is not packaged")
    with open(root + config_path) as f:
        config = json.load(f)
    sysusers = open(os.path.join(root, "usr/lib/sysusers.d/knowd.conf")).read().split("\n")
    users = [line.split() for line in sysusers if line.startswith("u ")]
    check(len(users) == 1 and users[0][1] == unit["User"] == unit["Group"] == "knowd",
          f"sysusers {users} vs User={unit['User']} Group={unit['Group']}")
    check(config["data-dir"] == "/var/lib/" + unit["StateDirectory"] == unit["WorkingDirectory"],
          f"data-dir {config['data-dir']} vs StateDirectory={unit['StateDirectory']} "
          f"WorkingDirectory={unit['WorkingDirectory']}")
    check(float(unit["TimeoutStopSec"]) > float(config["drain-timeout"]),
          f"TimeoutStopSec {unit['TimeoutStopSec']} is not above drain-timeout "
          f"{config['drain-timeout']}")

    # Serve from the unpacked tree, with the shipped config (every key in it must be accepted)
    # and only the addresses and data directory overridden. The working directory holds no
    # models/, so the bundle found is the package's own.
    cwd = os.path.join(args.work, "cwd")
    data = os.path.join(args.work, "data")
    os.makedirs(cwd)
    daemon = Daemon([knowd, "serve", "--config", root + config_path, "--listen", "127.0.0.1:0",
                     "--http-listen", "127.0.0.1:0", "--data-dir", data],
                    os.path.join(args.work, "knowd.log"), env=clean_env(), cwd=cwd)
    try:
        model = daemon.banner_value("model").split(" (")[0]
        check(os.path.realpath(model) ==
              os.path.realpath(os.path.join(root, "usr/share/knowd/models/knowd-tiny")),
              f"the unpacked daemon serves {model}, not the package's bundle")
        check("adapter " + model + "/adapter" in daemon.banner_value("model"),
              f"no adapter from the package's bundle: {daemon.banner_value('model')}")
        print(f"unpacked knowd serves {model} on {daemon.grpc} (grpc), {daemon.http} (http)")
        wait_status(daemon.http, "/readyz", 200)
        check(http_get(daemon.http, "/healthz")[0] == 200, "/healthz is not 200")

        doc = os.path.join(args.work, "lighthouse.txt")
        with open(doc, "w") as f:
            f.write("The lighthouse keeper Orvan Tesk lives in the harbour town of Miravel.\n")
        env = clean_env({"KNOWCTL_SERVER": daemon.grpc})
        acks = [json.loads(line) for line in
                run([knowctl, "ingest", doc, "--json"], env=env).splitlines()]
        check(len(acks) == 1 and acks[0]["id"] == "lighthouse.txt" and not acks[0].get("error_code"),
              f"ingest acks: {acks}")
        stats = json.loads(run([knowctl, "stats", "--json"], env=env))
        check(int(stats["documents"]) == 1 and int(stats["passages"]) >= 1, f"stats: {stats}")
        hits = json.loads(run([knowctl, "search", "Orvan Tesk", "--top-k", "1", "--json"],
                              env=env))
        found = [p["document_id"] for p in hits["passages"]]
        check(found == ["lighthouse.txt"], f"search for Orvan Tesk found {hits}")
        check(stats["version"] == args.version, f"Stats version {stats['version']}")
        status, body = http_get(daemon.http, "/metrics")
        check(status == 200 and metric(body, "knowd_bank_documents") == 1,
              "/metrics does not count the document")
        print(f"knowctl ingest, stats ({stats['documents']} document, {stats['passages']} "
              f"passages) and search work against it")
        code = daemon.terminate(timeout=float(config["drain-timeout"]) + 5)
        check(code == 0, f"SIGTERM: exit {code}; log:\n{daemon.log_text()}")
    finally:
        daemon.kill()
    mode = stat.S_IMODE(os.stat(data).st_mode)
    check(mode == 0o700, f"data directory mode {oct(mode)}")
    print("SIGTERM: exit 0")
    if cuda:
        check_cuda_package(args, os.path.join(args.deb_dir, names[1]), root, knowd, cwd)


def check_cuda_package(args, deb, root, knowd, cwd):
    """knowd-cuda: its fields and file, and the unpacked daemon asking for the CUDA backend
    without it (told to install it) and with it (the module loads: the daemon serves on a
    device, or names why the device is unusable)."""
    fields = {name: run(["dpkg-deb", "-f", deb, name]).strip()
              for name in ("Package", "Version", "Depends")}
    check(fields["Package"] == "knowd-cuda" and fields["Version"] == args.version,
          f"knowd-cuda fields {fields}")
    depends = [d.strip() for d in fields["Depends"].split(",")]
    check(depends[0] == f"knowd (= {args.version})", f"knowd-cuda Depends: {fields['Depends']}")
    check(any(d.startswith("cuda-cudart-") for d in depends)
          and any(d.startswith("libcublas-") for d in depends),
          f"knowd-cuda Depends names no CUDA runtime and cuBLAS: {fields['Depends']}")
    module = "./usr/lib/knowd/backends/libknowd_cuda.so"
    listing = [line.split(None, 5)[5] for line in run(["dpkg-deb", "-c", deb]).splitlines()]
    check(module in listing, f"knowd-cuda holds {listing}, not {module}")

    env = clean_env({"LD_LIBRARY_PATH": os.pathsep.join(args.cuda_lib_dir)})

    def serve_cuda(tag):
        data = os.path.join(args.work, "data-cuda-" + tag)
        done = subprocess.run([knowd, "serve", "--backend", "cuda", "--listen", "127.0.0.1:0",
                               "--http-listen", "127.0.0.1:0", "--data-dir", data],
                              capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, out = serve_cuda("without")
    check(code != 0 and "install the knowd-cuda package" in out,
          f"knowd serve --backend cuda without knowd-cuda: exit {code}, {out}")
    print("without knowd-cuda, --backend cuda says to install it")
    run(["dpkg", "-x", deb, root])
    code, out = serve_cuda("with")
    check("not installed" not in out and "cannot load" not in out and
          (code != 0 and "CUDA device" in out),
          f"knowd serve --backend cuda with knowd-cuda: exit {code}, {out}")
    print(f"with knowd-cuda, the module loads and the daemon names the device: "
          f"{out.strip().splitlines()[-1]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--cpack", required=True)
    b.add_argument("--config", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--cuda", action="store_true", help="a CUDA build: knowd-cuda expected too")
    s = sub.add_parser("serve")
    s.add_argument("--deb-dir", required=True)
    s.add_argument("--version", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--cuda-lib-dir", action="append", default=[],
                   help="a CUDA build: knowd-cuda is checked, with the CUDA runtime from here")
    a = parser.parse_args()
    main(lambda: build(a) if a.command == "build" else serve(a))
