#!/usr/bin/python3
"""deploy/kubernetes: every overlay rendered offline and checked against the real daemon.

  kubernetes_test.py --kubectl KUBECTL --knowd build/daemon/knowd --manifests deploy/kubernetes
                     --version 0.1.0 --work DIR

For each overlay, `kubectl kustomize` renders it (no cluster needed) and the objects are checked:
every flag in the container's args and every key of the ConfigMap's knowd.json is a setting of
`knowd serve --help`, no setting is given twice (a flag silently beats the config file), the
listen ports are the named container ports the probes, Services, NetworkPolicy and
ServiceMonitor use, the data directory is the mount of the volumeClaimTemplate, the tokens file
lies in the Secret's mount, terminationGracePeriodSeconds exceeds drain-timeout, threads fit the
CPU limit. Then the real daemon is started with the rendered args and ConfigMap, each mount
mapped to a scratch directory (addresses on loopback port 0): the probe paths must answer 200
on the HTTP side, the Secret's tokens must be loaded (an anonymous call is UNAUTHENTICATED), the
bank must open in the volume's directory, and SIGTERM must end it within the grace period.
"""

import argparse
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deploy_util import Daemon, Failure, check, clean_env, http_get, main, run, wait_status  # noqa: E402

OVERLAYS = ("cpu", "gpu", "cluster")
MAKE_HAPROXY_CFG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                                "cluster", "make-haproxy-cfg")
# Objects every overlay renders, and those the cluster overlay adds (NATS, the router).
BASE_KINDS = ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "Service",
              "Service", "ServiceMonitor", "StatefulSet"]
CLUSTER_KINDS = ["ConfigMap", "Deployment", "Service", "Service", "StatefulSet"]
PROBES = {"startupProbe": ("/healthz", "/readyz"), "livenessProbe": ("/healthz",),
          "readinessProbe": ("/readyz",)}


def serve_settings(knowd):
    """The setting names `knowd serve --help` lists (flags = config keys = KNOWD_* names)."""
    done = subprocess.run([knowd, "serve", "--help"], capture_output=True, text=True)
    names = set(re.findall(r"^\s+--([a-z0-9-]+)\s", done.stdout + done.stderr, re.MULTILINE))
    check(len(names) > 20 and {"listen", "http-listen", "data-dir", "drain-timeout"} <= names,
          f"knowd serve --help lists {sorted(names)}")
    return names


def parse_args(args, settings, where):
    """--flag value / --flag=value pairs -> {canonical name: value}; every flag must exist."""
    out, i = {}, 0
    while i < len(args):
        arg = args[i]
        check(arg.startswith("--"), f"{where}: argument {arg!r} is not a --flag")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            check(i + 1 < len(args), f"{where}: {arg} has no value")
            value = args[i + 1]
            i += 1
        name = name.replace("_", "-").lower()
        check(name in settings, f"{where}: --{name} is not a flag of knowd serve")
        check(name not in out, f"{where}: --{name} is given twice")
        out[name] = value
        i += 1
    return out


def one(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    check(len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}")
    return found[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def cpu_cores(quantity):
    quantity = str(quantity)
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def port_of(address):
    host, _, port = address.rpartition(":")
    return host, int(port)


def check_overlay(name, objects, settings, version):
    """Static checks of one rendered overlay; returns what the live run needs."""
    where = f"overlay {name}"
    sts = one(objects, "StatefulSet", "knowd")
    pod = sts["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    check(selects(sts["spec"]["selector"]["matchLabels"], labels), f"{where}: selector")
    (container,) = [c for c in spec["containers"] if c["name"] == "knowd"]
    check("command" not in container or container["command"] == ["/usr/bin/knowd", "serve"],
          f"{where}: command {container.get('command')} replaces the image's knowd serve")
    expected_tag = version + ("-cuda" if name == "gpu" else "")
    check(container["image"] == f"knowd:{expected_tag}",
          f"{where}: image {container['image']}, expected knowd:{expected_tag}")

    flags = parse_args(container.get("args", []), settings, where)
    env = {}
    for var in container.get("env", []):
        if var["name"].startswith("KNOWD_"):
            key = var["name"][len("KNOWD_"):].lower().replace("_", "-")
            check(key in settings, f"{where}: env {var['name']} is not a knowd setting")
            if "value" in var:  # else from the pod (valueFrom), checked where it matters
                env[key] = var["value"]

    # Volumes and mounts.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    for path, volume in mounts.items():
        check(volume in volumes or volume in claims, f"{where}: mount {path} names no volume")

    def mount_of(path):
        """(mountPath, volume name) holding `path`."""
        best = max((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")),
                   key=len, default=None)
        check(best is not None, f"{where}: {path} lies in no volume mount")
        return best, mounts[best]

    # The config file: a key of the ConfigMap mounted where --config points.
    check("config" in flags, f"{where}: no --config")
    config_mount, config_volume = mount_of(flags["config"])
    cm_name = volumes[config_volume]["configMap"]["name"]
    configmap = one(objects, "ConfigMap", cm_name)
    key = os.path.relpath(flags["config"], config_mount)
    check(key in configmap["data"], f"{where}: ConfigMap {cm_name} has no {key}")
    config = json.loads(configmap["data"][key])
    for k in config:
        canonical = k.replace("_", "-").lower()
        check(canonical in settings and canonical != "config",
              f"{where}: knowd.json key {k!r} is not a knowd serve setting")
        check(canonical not in flags and canonical not in env,
              f"{where}: {k} is set in knowd.json and as a flag or env (the file's is ignored)")
    effective = {**{k.replace("_", "-").lower(): str(v) for k, v in config.items()}, **env,
                 **flags}

    # Data directory = the volumeClaimTemplate's mount.
    data_dir = effective.get("data-dir")
    check(data_dir is not None, f"{where}: the data directory is left at ./knowd-data")
    check(mounts.get(data_dir) in claims,
          f"{where}: data-dir {data_dir} is not the mount of a volumeClaimTemplate "
          f"(mounts {mounts}, claims {claims})")

    # Secrets: the tokens file is a key of the mounted Secret.
    secrets = {}
    for setting in ("tokens-file", "tls-cert", "tls-key", "tls-client-ca"):
        if setting not in effective:
            continue
        mount, volume = mount_of(effective[setting])
        check("secret" in volumes[volume], f"{where}: {setting} is not in a Secret mount")
        secret = one(objects, "Secret", volumes[volume]["secret"]["secretName"])
        item = os.path.relpath(effective[setting], mount)
        check(item in secret.get("data", {}), f"{where}: Secret has no {item} for {setting}")
        secrets[setting] = base64.b64decode(secret["data"][item])
    check("tokens-file" in secrets, f"{where}: no tokens file: every call would be allowed")
    tokens = json.loads(secrets["tokens-file"])
    check(isinstance(tokens, list) and tokens, f"{where}: the tokens file holds no token")

    # Ports: the listen addresses are the named container ports, on every interface.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    grpc_host, grpc_port = port_of(effective.get("listen", "127.0.0.1:7070"))
    http_host, http_port = port_of(effective.get("http-listen", "127.0.0.1:7071"))
    check(ports.get("grpc") == grpc_port and grpc_host == "0.0.0.0",
          f"{where}: listen {effective.get('listen')} vs container port grpc {ports.get('grpc')}")
    check(ports.get("http") == http_port and http_host == "0.0.0.0",
          f"{where}: http-listen {effective.get('http-listen')} vs port http {ports.get('http')}")

    def resolve(port):
        return ports.get(port, port) if isinstance(port, str) else port

    probe_paths = {}
    for probe, allowed in PROBES.items():
        check(probe in container, f"{where}: no {probe}")
        get = container[probe].get("httpGet")
        check(get is not None, f"{where}: {probe} is not an HTTP GET")
        check(get["path"] in allowed, f"{where}: {probe} path {get['path']} (expected {allowed})")
        check(resolve(get["port"]) == http_port,
              f"{where}: {probe} port {get['port']} is not the HTTP side {http_port}")
        probe_paths[probe] = get["path"]
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    check(budget >= 300, f"{where}: the startup probe allows {budget} s to open a bank")

    drain = float(effective.get("drain-timeout", "30").rstrip("s"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > drain, f"{where}: terminationGracePeriodSeconds {grace} <= drain {drain}")

    limits = container["resources"]["limits"]
    threads = int(effective.get("threads", "0"))
    check(0 < threads <= cpu_cores(limits["cpu"]),
          f"{where}: threads {threads} (0 = every core of the node) vs CPU limit {limits['cpu']}")

    if name == "gpu":
        check(effective.get("backend") == "cuda", f"{where}: backend {effective.get('backend')}")
        check(str(limits.get("nvidia.com/gpu")) == "1", f"{where}: nvidia.com/gpu {limits}")
    else:
        check(effective.get("backend", "cpu") == "cpu", f"{where}: backend {effective.get('backend')}")
        check("nvidia.com/gpu" not in limits, f"{where}: asks for a GPU")
    cluster = None
    if name == "cluster":
        cluster = check_cluster(where, objects, sts, container, effective, grpc_port, http_port)

    # Services, PDB, NetworkPolicy, ServiceMonitor select the pods and name real ports.
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    check(sts["spec"]["serviceName"] in services
          and services[sts["spec"]["serviceName"]]["spec"].get("clusterIP") == "None",
          f"{where}: serviceName {sts['spec']['serviceName']} is not a headless Service")
    for service_name, port_name, number in (("knowd", "grpc", grpc_port),
                                            ("knowd-http", "http", http_port)):
        svc = services.get(service_name)
        check(svc is not None, f"{where}: no Service {service_name}")
        check(selects(svc["spec"]["selector"], labels), f"{where}: {service_name} selects no pod")
        (svc_port,) = [p for p in svc["spec"]["ports"] if p["name"] == port_name]
        check(resolve(svc_port["targetPort"]) == number,
              f"{where}: {service_name} targets {svc_port['targetPort']}, not {number}")
    pdb = one(objects, "PodDisruptionBudget")
    check(selects(pdb["spec"]["selector"]["matchLabels"], labels), f"{where}: PDB selects no pod")
    policy = one(objects, "NetworkPolicy")
    check(selects(policy["spec"]["podSelector"]["matchLabels"], labels),
          f"{where}: NetworkPolicy selects no pod")
    allowed = {resolve(p["port"]) for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    check({grpc_port, http_port} <= allowed, f"{where}: NetworkPolicy admits ports {allowed}")
    monitor = one(objects, "ServiceMonitor")
    monitored = [s for s in services.values()
                 if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    check([s["metadata"]["name"] for s in monitored] == ["knowd-http"],
          f"{where}: ServiceMonitor selects {[s['metadata']['name'] for s in monitored]}")
    (endpoint,) = monitor["spec"]["endpoints"]
    check(endpoint["path"] == "/metrics" and
          endpoint["port"] in [p["name"] for p in monitored[0]["spec"]["ports"]],
          f"{where}: ServiceMonitor endpoint {endpoint}")

    return {"container": container, "volumes": volumes, "claims": claims, "mounts": mounts,
            "objects": objects, "flags": flags, "config": config, "config_key": key,
            "config_mount": config_mount, "probes": probe_paths, "grace": grace,
            "data_dir": data_dir, "cluster": cluster}


def check_cluster(where, objects, sts, container, effective, grpc_port, http_port):
    """The cluster overlay: knowd's replicas join the log on the NATS StatefulSet's servers, each
    named after its pod, and the router's haproxy.cfg is make-haproxy-cfg's for these replicas."""
    replicas = sts["spec"]["replicas"]
    check(replicas > 1, f"{where}: replicas {replicas}")
    check(all(k in effective for k in ("cluster-nats", "shards", "shard")),
          f"{where}: the replicas are not joined to a cluster: {sorted(effective)}")
    names = [v for v in container.get("env", []) if v["name"] == "KNOWD_REPLICA"]
    check(len(names) == 1 and names[0].get("valueFrom", {}).get("fieldRef", {}).get(
        "fieldPath") == "metadata.name", f"{where}: KNOWD_REPLICA is not the pod's name")
    nats = one(objects, "StatefulSet", "nats")
    nats_service = one(objects, "Service", nats["spec"]["serviceName"])
    check(nats_service["spec"].get("clusterIP") == "None", f"{where}: nats is not headless")
    (server,) = nats["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    pods = [f"nats-{i}.{nats['spec']['serviceName']}" for i in range(nats["spec"]["replicas"])]
    urls = [f"nats://{pod}:{ports['client']}" for pod in pods]
    check(effective["cluster-nats"].split(",") == urls,
          f"{where}: cluster-nats {effective['cluster-nats']}, the NATS pods are {urls}")
    args = server["args"]
    routes = args[args.index("--routes") + 1].split(",")
    check(routes == [f"nats://{pod}:{ports['cluster']}" for pod in pods] and "-js" in args,
          f"{where}: NATS routes {routes} or JetStream off")
    copies = int(effective.get("cluster-stream-replicas", "3"))
    check(copies <= len(pods), f"{where}: {copies} copies of the log on {len(pods)} servers")
    check(int(effective["shards"]) == 1 and int(effective["shard"]) == 0,
          f"{where}: one StatefulSet serves shard 0 of 1, not {effective['shard']} of "
          f"{effective['shards']}")
    # The router's configuration: make-haproxy-cfg's, for this StatefulSet's pods.
    router = one(objects, "Deployment", "knowd-router")
    (proxy,) = router["spec"]["template"]["spec"]["containers"]
    cfg_volume = [v for v in router["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    cfg = one(objects, "ConfigMap", cfg_volume[0]["configMap"]["name"])["data"]["haproxy.cfg"]
    shard = ",".join(f"knowd-{i}.{sts['spec']['serviceName']}:{grpc_port}:{http_port}"
                     for i in range(replicas))
    expected = run([MAKE_HAPROXY_CFG, "--listen", ":7070", "--stats", ":8404", "--resolvers",
                    "--shard", shard])
    check(cfg == expected, f"{where}: haproxy.cfg is not make-haproxy-cfg's for {shard}")
    router_ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    check(router_ports.get("grpc") == 7070, f"{where}: router ports {router_ports}")
    svc = one(objects, "Service", "knowd-router")
    check(selects(svc["spec"]["selector"], router["spec"]["template"]["metadata"]["labels"]),
          f"{where}: Service knowd-router selects no router pod")
    if shutil.which("haproxy"):
        path = os.path.join(tempfile.mkdtemp(), "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        run(["haproxy", "-c", "-f", path])
    return {"pods": pods}


def run_overlay(name, rendered, knowd, knowctl, work):
    """Starts the real daemon with the overlay's args and ConfigMap, mounts mapped to scratch
    directories; probes, the tokens file, the data directory and SIGTERM are checked."""
    where = f"overlay {name} (live)"
    root = os.path.join(work, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    mapping = {}
    for i, (mount, volume) in enumerate(sorted(rendered["mounts"].items())):
        local = os.path.join(root, f"mount{i}")
        os.makedirs(local)
        mapping[mount] = local
        source = rendered["volumes"].get(volume, {})
        if "configMap" in source:
            cm = one(rendered["objects"], "ConfigMap", source["configMap"]["name"])
            for item, text in cm["data"].items():
                with open(os.path.join(local, item), "w") as f:
                    f.write(text)
        elif "secret" in source:
            secrets = [o for o in rendered["objects"] if o["kind"] == "Secret"
                       and o["metadata"]["name"] == source["secret"]["secretName"]]
            check(secrets or source["secret"].get("optional"), f"{where}: no Secret for {volume}")
            for item, text in (secrets[0].get("data", {}) if secrets else {}).items():
                with open(os.path.join(local, item), "wb") as f:
                    f.write(base64.b64decode(text))

    def local(path):
        best = max((m for m in mapping if path == m or path.startswith(m.rstrip("/") + "/")),
                   key=len, default=None)
        return path if best is None else mapping[best] + path[len(best):]

    # The config file with its paths mapped (it is what the daemon reads).
    config = {k: (local(v) if isinstance(v, str) and v.startswith("/") else v)
              for k, v in rendered["config"].items()}
    config_file = local(rendered["flags"]["config"])
    with open(config_file, "w") as f:
        json.dump(config, f)
    args = []
    for flag, value in rendered["flags"].items():
        if flag in ("listen", "http-listen"):
            value = "127.0.0.1:0"
        elif value.startswith("/"):
            value = local(value)
        args += [f"--{flag}", value]
    if name == "gpu":
        args += ["--backend", "cpu"]  # the flags are checked above; this machine may have no GPU
    env = clean_env({v["name"]: v["value"] for v in rendered["container"].get("env", [])
                     if "value" in v})
    nats = None
    if rendered["cluster"] is not None:
        # The log on one local NATS server (one copy) in place of the StatefulSet's three; the
        # replica named as its first pod.
        check(shutil.which("nats-server") is not None,
              f"{where}: nats-server is missing (scripts/install-deps installs it)")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        nats_port = probe.getsockname()[1]
        probe.close()
        nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                                 "-sd", os.path.join(root, "nats")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.update({"KNOWD_CLUSTER_NATS": f"nats://127.0.0.1:{nats_port}",
                    "KNOWD_CLUSTER_STREAM_REPLICAS": "1", "KNOWD_REPLICA": "knowd-0"})
    cwd = os.path.join(root, "cwd")
    os.makedirs(cwd)
    try:
        daemon = Daemon([knowd, "serve", *args], os.path.join(root, "knowd.log"), env=env,
                        cwd=cwd)
    except Failure:
        if nats is not None:
            nats.kill()
        raise
    try:
        bank = daemon.banner_value("memory bank").split(";")[0]
        check(bank == local(rendered["data_dir"]),
              f"{where}: the bank opened in {bank}, not the volume's {local(rendered['data_dir'])}")
        check(re.search(r"auth 1 tokens from ", daemon.banner_value("memory bank")),
              f"{where}: the Secret's tokens were not loaded: {daemon.banner}")
        for probe, path in rendered["probes"].items():
            expected = 200
            if probe == "readinessProbe":
                wait_status(daemon.http, path, 200)
            status, body = http_get(daemon.http, path)
            check(status == expected, f"{where}: {probe} {path} answered {status}: {body[:100]}")
        done = subprocess.run([knowctl, "--server", daemon.grpc, "stats"], capture_output=True,
                              text=True, env=clean_env())
        check(done.returncode == 1 and "UNAUTHENTICATED" in done.stderr,
              f"{where}: an anonymous Stats got exit {done.returncode}: {done.stderr.strip()}")
        code = daemon.terminate(timeout=rendered["grace"])
        check(code == 0, f"{where}: SIGTERM gave exit {code} within {rendered['grace']} s; "
                         f"log:\n{daemon.log_text()}")
    finally:
        daemon.kill()
        if nats is not None:
            nats.kill()
            nats.wait()
    cpu_note = " (here with --backend cpu after it)" if name == "gpu" else ""
    print(f"{name}: knowd serve {' '.join(rendered['container']['args'])}{cpu_note} started with the "
          f"rendered knowd.json; {', '.join(sorted(set(rendered['probes'].values())))} answer 200; "
          f"anonymous call UNAUTHENTICATED; SIGTERM exit 0")


def body(a):
    check(a.kubectl and os.access(a.kubectl, os.X_OK),
          f"kubectl not found ({a.kubectl!r}): scripts/install-deps installs kubernetes-client")
    version = run([a.kubectl, "version", "--client"]).strip().splitlines()[0]
    print(f"kubectl: {version}")
    settings = serve_settings(a.knowd)
    for name in OVERLAYS:
        path = os.path.join(a.manifests, "overlays", name)
        objects = [o for o in yaml.safe_load_all(run([a.kubectl, "kustomize", path])) if o]
        kinds = sorted(o["kind"] for o in objects)
        expected = sorted(BASE_KINDS + (CLUSTER_KINDS if name == "cluster" else []))
        check(kinds == expected, f"overlay {name} renders {kinds}, expected {expected}")
        check(all(o["metadata"].get("namespace") == "knowd" for o in objects),
              f"overlay {name}: objects outside namespace knowd")
        rendered = check_overlay(name, objects, settings, a.version)
        print(f"{name}: {len(objects)} objects render; flags, ConfigMap keys, ports, probes, "
              f"volumes, Secret, grace period and selectors agree with knowd serve")
        run_overlay(name, rendered, a.knowd, a.knowctl, a.work)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", default=shutil.which("kubectl"))
    parser.add_argument("--knowd", required=True)
    parser.add_argument("--knowctl", required=True)
    parser.add_argument("--manifests", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    args.knowd, args.knowctl = os.path.abspath(args.knowd), os.path.abspath(args.knowctl)
    main(lambda: body(args))
