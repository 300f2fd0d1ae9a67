#!/usr/bin/python3
"""knowd scaled out on loopback: 3 NATS servers (JetStream, the log replicated 3 ways), 2 shards x 2
knowd replicas, HAProxy routing by the namespace header (deploy/cluster/make-haproxy-cfg).

    cluster_test.py --knowd BUILD/daemon/knowd --knowctl BUILD/client/knowctl
                    --model models/knowd-tiny --source-dir REPO
                    --work DIR [--documents 1000] [--namespaces 8]

Ingests the documents through HAProxy over gRPC (grpcio, stubs from client/python's
generate_stubs.py) across the namespaces while one knowd replica and one NATS server are killed
with SIGKILL and restarted; asks go through HAProxy all along. Then checks that every
acknowledged document is on every replica of its shard and on no replica of the other, that
asks failed only while in flight on the killed replica, and that the restarted replica caught
up. Prints the counts and the asks/s of the cluster beside one process's.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "deploy"))
from deploy_util import Daemon, Failure, check, clean_env, main, run, wait_status  # noqa: E402

import grpc  # noqa: E402

SHARDS = 2
REPLICAS = 2


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def shard_of(namespace):
    return zlib.crc32(namespace.encode()) % SHARDS


class Nats:
    """One nats-server of a 3-node JetStream cluster, restartable on the same ports and store."""

    def __init__(self, name, port, cluster_port, routes, work):
        self.name, self.port, self.work = name, port, work
        self.argv = ["nats-server", "-n", name, "-a", "127.0.0.1", "-p", str(port), "-js",
                     "-sd", os.path.join(work, name), "--cluster_name", "knowd",
                     "--cluster", f"nats://127.0.0.1:{cluster_port}", "--routes", routes]
        self.proc = None

    def start(self):
        log = open(os.path.join(self.work, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Replica:
    def __init__(self, args, shard, index, nats_urls, work):
        self.shard, self.index = shard, index
        self.name = f"s{shard}r{index}"
        self.grpc_port, self.http_port = free_ports(2)
        self.data = os.path.join(work, self.name)
        self.log = os.path.join(work, f"{self.name}.log")
        self.argv = [args.knowd, "serve", "--model", args.model,
                     "--listen", f"127.0.0.1:{self.grpc_port}",
                     "--http-listen", f"127.0.0.1:{self.http_port}", "--data-dir", self.data,
                     "--cluster-nats", nats_urls, "--shards", str(SHARDS),
                     "--shard", str(shard), "--replica", self.name, "--threads", "1"]
        self.daemon = None

    @property
    def http(self):
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self):
        return f"127.0.0.1:{self.grpc_port}"

    def start(self):
        self.daemon = Daemon(self.argv, self.log, env=clean_env(), timeout=180)

    def kill(self):
        self.daemon.proc.send_signal(signal.SIGKILL)
        self.daemon.proc.wait()


def stubs(source_dir, work):
    out = os.path.join(work, "stubs")
    run([sys.executable, os.path.join(source_dir, "client/python/generate_stubs.py"), out,
         "--proto-root", os.path.join(source_dir, "proto")])
    sys.path.insert(0, out)
    from knowd.v1 import knowd_pb2, knowd_pb2_grpc  # noqa: E402
    return knowd_pb2, knowd_pb2_grpc


def body(args):
    missing = [tool for tool in ("nats-server", "haproxy") if shutil.which(tool) is None]
    if missing:
        print(f"SKIP: {' and '.join(missing)} not installed (scripts/install-deps installs them)")
        sys.exit(77)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    pb, pb_grpc = stubs(args.source_dir, args.work)
    namespaces = [f"tenant-{i}" for i in range(args.namespaces)]
    owners = {ns: shard_of(ns) for ns in namespaces}
    check(set(owners.values()) == set(range(SHARDS)), f"namespaces on one shard only: {owners}")

    # NATS: three servers, each routing to the others.
    client_ports, cluster_ports = free_ports(3), free_ports(3)
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nats = [Nats(f"n{i}", client_ports[i], cluster_ports[i], routes, args.work) for i in range(3)]
    for n in nats:
        n.start()
    nats_urls = ",".join(f"nats://127.0.0.1:{p}" for p in client_ports)
    replicas = [Replica(args, s, r, nats_urls, args.work)
                for s in range(SHARDS) for r in range(REPLICAS)]
    haproxy = None
    try:
        start = time.monotonic()
        for r in replicas:
            r.start()
        for r in replicas:
            wait_status(r.http, "/readyz", 200, timeout=120)
        print(f"3 NATS servers and {len(replicas)} replicas ready in "
              f"{time.monotonic() - start:.1f} s", flush=True)

        router_port, stats_port = free_ports(2)
        cfg = run([os.path.join(args.source_dir, "deploy/cluster/make-haproxy-cfg"),
                   "--listen", f"127.0.0.1:{router_port}", "--stats", f"127.0.0.1:{stats_port}"]
                  + sum((["--shard", ",".join(f"127.0.0.1:{r.grpc_port}:{r.http_port}"
                                              for r in replicas if r.shard == s)]
                         for s in range(SHARDS)), []))
        cfg_path = os.path.join(args.work, "haproxy.cfg")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        haproxy = subprocess.Popen(["haproxy", "-f", cfg_path, "-db"],
                                   stdout=open(os.path.join(args.work, "haproxy.log"), "wb"),
                                   stderr=subprocess.STDOUT)
        router = f"127.0.0.1:{router_port}"
        channel = grpc.insecure_channel(router)
        grpc.channel_ready_future(channel).result(timeout=30)
        for s in range(SHARDS):  # HAProxy has checked a replica of each shard
            wait_status(f"127.0.0.1:{stats_port}", f"/stats;csv", 200, timeout=10)
        time.sleep(1.5)
        stub = pb_grpc.KnowledgeServiceStub(channel)

        def header(ns):
            return (("x-knowd-namespace", ns),)

        # Every namespace gets a first document, so asks with memory have something to read.
        acked = {}  # (ns, id) -> log sequence
        lock = threading.Lock()

        def ingest(ns, docs):
            """Streams docs into ns through the router; returns the ids not acknowledged."""
            requests = (pb.IngestRequest(namespace=ns.encode(), id=i.encode(), text=t.encode())
                        for i, t in docs)
            left = {i for i, _ in docs}
            try:
                for ack in stub.Ingest(requests, metadata=header(ns), timeout=60):
                    if ack.error_code == 0:
                        check(ack.log_sequence > 0, f"ack without a log sequence: {ack}")
                        with lock:
                            acked[(ns, ack.id)] = ack.log_sequence
                        left.discard(ack.id)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            return left

        def text(ns, i):
            return (f"Record {i} of {ns}: the lighthouse keeper Orvan Tesk {i} lives in the "
                    f"harbour town of Miravel {i} and keeps {i % 7 + 2} lamps.")

        for ns in namespaces:
            check(not ingest(ns, [("seed", text(ns, 0))]), f"seed of {ns} not acknowledged")

        # Asks through the router, all along.
        asks = {"ok": 0, "failed": 0, "codes": {}}
        stop_asking = threading.Event()

        def ask_loop(worker):
            k = worker
            while not stop_asking.is_set():
                ns = namespaces[k % len(namespaces)]
                k += 1
                try:
                    final = None
                    # Read-your-writes: whichever replica the router picks answers once it has
                    # applied the namespace's seed (a replica still behind it would find the
                    # namespace empty).
                    for chunk in stub.Ask(pb.AskRequest(namespace=ns.encode(),
                                                        question=b"Where does Orvan Tesk live?",
                                                        mode=pb.ASK_MODE_RAG, max_tokens=4,
                                                        stream=False,
                                                        min_log_sequence=acked[(ns, "seed")]),
                                          metadata=header(ns), timeout=30):
                        if chunk.HasField("final"):
                            final = chunk.final
                    check(final is not None, "an ask without a final chunk")
                    with lock:
                        asks["ok"] += 1
                except grpc.RpcError as e:
                    with lock:
                        asks["failed"] += 1
                        asks["codes"][e.code().name] = asks["codes"].get(e.code().name, 0) + 1

        askers = [threading.Thread(target=ask_loop, args=(w,), daemon=True) for w in range(2)]
        for t in askers:
            t.start()

        # The documents, in streams of 25 per namespace, from 4 writers; a stream broken by a
        # kill has its unacknowledged documents sent again.
        docs = [(namespaces[i % len(namespaces)], f"doc-{i}") for i in range(args.documents)]
        batches = []
        for ns in namespaces:
            mine = [(i, text(ns, int(i.split("-")[1]))) for n, i in docs if n == ns]
            batches += [(ns, mine[j:j + 25]) for j in range(0, len(mine), 25)]
        resent = {"documents": 0}
        next_batch = {"i": 0}

        def writer():
            while True:
                with lock:
                    if next_batch["i"] >= len(batches):
                        return
                    ns, batch = batches[next_batch["i"]]
                    next_batch["i"] += 1
                for attempt in range(40):
                    left = ingest(ns, batch)
                    if not left:
                        break
                    with lock:
                        resent["documents"] += len(left)
                    batch = [(i, t) for i, t in batch if i in left]
                    time.sleep(0.25)
                check(not left, f"{len(left)} documents of {ns} never acknowledged")
                time.sleep(0.2)  # paced, so the faults below land while documents stream in

        writers = [threading.Thread(target=writer, daemon=True) for _ in range(4)]
        ingest_start = time.monotonic()
        for t in writers:
            t.start()

        # The faults: once a third is acknowledged, kill one replica of shard 0 and one NATS
        # server; restart the NATS server after 2 s and the replica after 4 s.
        # ... and once the victim has applied some of them itself, so its restart resumes from
        # a position inside the log.
        victim = replicas[1]
        victim_stub = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(victim.grpc))
        give_up = time.monotonic() + 300
        while (len(acked) < len(namespaces) + args.documents // 3
               or victim_stub.Stats(pb.StatsRequest(), timeout=10).documents < args.documents // 25):
            check(time.monotonic() < give_up,
                  f"only {len(acked)} documents acknowledged after 300 s")
            time.sleep(0.05)
        with lock:
            asks_before = dict(asks)
        victim.kill()
        nats[2].kill()
        killed_at = time.monotonic()
        print(f"SIGKILL {victim.name} and NATS n2 after {len(acked)} acknowledged documents",
              flush=True)
        time.sleep(2)
        nats[2].start()
        time.sleep(2)
        victim.start()
        restarted_at = time.monotonic()
        for t in writers:
            t.join()
        ingest_seconds = time.monotonic() - ingest_start
        wait_status(victim.http, "/readyz", 200, timeout=180)
        caught_up_at = time.monotonic()
        # Its restart (the log file is the restarted process's) names the log position its bank
        # had reached when it was killed.
        starts = re.findall(r"cluster: replica \S+ of shard .* applied up to (\d+)",
                            open(victim.log, errors="replace").read())
        check(len(starts) == 1 and int(starts[0]) > 0,
              f"{victim.name}'s restart resumed from {starts}")
        stop_asking.set()
        for t in askers:
            t.join()
        with lock:
            check(len(acked) == args.documents + len(namespaces),
                  f"{len(acked)} documents acknowledged, expected "
                  f"{args.documents + len(namespaces)}")
        print(f"{len(acked)} documents acknowledged through HAProxy in {ingest_seconds:.1f} s "
              f"({resent['documents']} sent again after a broken stream or an unstored write)",
              flush=True)
        print(f"{victim.name} restarted {restarted_at - killed_at:.1f} s after the kill, resumed "
              f"the log after sequence {starts[0]} (its bank's marker), ready (caught up) "
              f"{caught_up_at - restarted_at:.1f} s later", flush=True)

        # Every acknowledged document is on every replica of its shard, and nowhere else.
        top = {s: max(seq for (ns, _), seq in acked.items() if owners[ns] == s)
               for s in range(SHARDS)}
        for r in replicas:
            direct = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(r.grpc))
            expected = {key for key in acked if owners[key[0]] == r.shard}
            first = True
            for ns, doc_id in sorted(expected):
                got = direct.Get(pb.GetRequest(namespace=ns.encode(), id=doc_id.encode(),
                                               min_log_sequence=top[r.shard] if first else 0),
                                 metadata=header(ns), timeout=120)
                first = False
                check(got.id == doc_id and got.passages, f"{r.name}: {ns}/{doc_id}: {got}")
            stats = direct.Stats(pb.StatsRequest(), timeout=30)
            held = {n.name: n.documents for n in stats.namespaces}
            want = {}
            for ns, _ in expected:
                want[ns] = want.get(ns, 0) + 1
            check(held == want, f"{r.name} holds {held}, expected {want}")
            for ns in namespaces:
                if owners[ns] != r.shard:
                    try:
                        direct.Get(pb.GetRequest(namespace=ns.encode(), id=b"seed"), timeout=10)
                        raise Failure(f"{r.name} answered for {ns} of shard {owners[ns]}")
                    except grpc.RpcError as e:
                        check(e.code() == grpc.StatusCode.FAILED_PRECONDITION,
                              f"{r.name}: a namespace of another shard: {e.code()} {e.details()}")
            print(f"{r.name} (shard {r.shard}): all {len(expected)} documents of its "
                  f"{len(want)} namespaces, none of the other shard's", flush=True)

        # knowctl sends the namespace header itself: through the router it reaches each
        # namespace's shard.
        for ns in namespaces:
            got = json.loads(run([args.knowctl, "--server", router, "--namespace", ns, "get",
                                  "seed", "--json"], env=clean_env()))
            check(got["id"] == "seed" and got["namespace"] == ns, f"knowctl get in {ns}: {got}")
        print(f"knowctl through HAProxy reads each of the {len(namespaces)} namespaces from its "
              f"shard", flush=True)

        failed_during = asks["failed"] - asks_before["failed"]
        print(f"asks through HAProxy during the run: {asks['ok']} answered, {asks['failed']} "
              f"failed {asks['codes']}", flush=True)
        check(asks["failed"] == failed_during, "asks failed before the kill")
        check(asks["failed"] <= len(askers),
              f"{asks['failed']} asks failed: more than the {len(askers)} that can be in flight "
              f"on the killed replica")
        check(asks["ok"] > 0, "no ask answered")

        # Throughput: asks/s through the router (all replicas) beside one replica alone.
        def rate(target, ns_list, seconds=8.0, threads=4):
            count = {"n": 0}
            end = time.monotonic() + seconds
            s = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(target))

            def loop(w):
                k = w
                while time.monotonic() < end:
                    ns = ns_list[k % len(ns_list)]
                    k += 1
                    for _ in s.Ask(pb.AskRequest(namespace=ns.encode(), question=b"Where?",
                                                 mode=pb.ASK_MODE_RAG, max_tokens=4,
                                                 stream=False),
                                   metadata=header(ns), timeout=30):
                        pass
                    with lock:
                        count["n"] += 1
            ts = [threading.Thread(target=loop, args=(w,)) for w in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return count["n"] / seconds

        shard0 = [ns for ns in namespaces if owners[ns] == 0]
        one = rate(replicas[0].grpc, shard0)
        cluster = rate(router, namespaces)
        print(f"asks/s (rag, 4 tokens, 4 client threads, {os.cpu_count()} cores shared by all "
              f"processes): cluster through HAProxy {cluster:.1f}, one replica alone {one:.1f}",
              flush=True)
    finally:
        if haproxy is not None:
            haproxy.kill()
        for r in replicas:
            if r.daemon is not None:
                r.daemon.kill()
        for n in nats:
            n.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--knowd", required=True)
    parser.add_argument("--knowctl", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--source-dir", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=8)
    a = parser.parse_args()
    main(lambda: body(a))
