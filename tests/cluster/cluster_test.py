#!/usr/bin/python3
"""knowd scaled out on loopback: 3 NATS servers (JetStream, the log replicated 3 ways), 2 shards x 2
knowd replicas, HAProxy routing by the namespace header (deploy/cluster/make-haproxy-cfg).

    cluster_test.py --knowd BUILD/daemon/knowd --knowctl BUILD/client/knowctl
                    --model models/knowd-tiny --source-dir REPO
                    --work DIR [--documents 1000] [--namespaces 8]

Ingests the documents through HAProxy over gRPC (grpcio, stubs from client/python's
generate_stubs.py) across the namespaces while one knowd replica and one NATS server are killed
with SIGKILL (from inside the ingest stream whose ack makes a third acknowledged, after a first
wave every replica has applied; the last third waits for the kill) and restarted; asks go through HAProxy all along. Then checks that every
acknowledged document is on every replica of its shard and on no replica of the other, that
asks failed only while in flight on the killed replica, and that the restarted replica caught
up; that a Forget through HAProxy is applied by every replica of its shard (at its
log_sequence) and by no other; and that reads with a min_log_sequence past the log answer
DEADLINE_EXCEEDED at their deadline. Prints the counts and the asks/s of the cluster beside one
process's.
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
        asks = {"ok": 0, "failed": 0, "codes": {}}
        victim = replicas[1]

        # The faults fire from inside an ingest stream's ack loop when the acknowledgement that
        # makes a third of the documents acknowledged arrives: that stream (and the other
        # writers') is open at the kill, whatever the machine's speed.
        fault = {"threshold": None, "claimed": False, "open_streams": 0, "open_at_kill": 0,
                 "acked_at_kill": 0, "asks_before": None, "killed_at": None,
                 "fired": threading.Event()}

        def inject_faults():
            with lock:
                fault["asks_before"] = {"ok": asks["ok"], "failed": asks["failed"]}
                fault["acked_at_kill"] = len(acked)
                fault["open_at_kill"] = fault["open_streams"]
            victim.kill()
            nats[2].kill()
            fault["killed_at"] = time.monotonic()
            fault["fired"].set()

        def ingest(ns, docs):
            """Streams docs into ns through the router; returns the ids not acknowledged."""
            requests = (pb.IngestRequest(namespace=ns.encode(), id=i.encode(), text=t.encode())
                        for i, t in docs)
            left = {i for i, _ in docs}
            with lock:
                fault["open_streams"] += 1
            try:
                for ack in stub.Ingest(requests, metadata=header(ns), timeout=60):
                    if ack.error_code == 0:
                        check(ack.log_sequence > 0, f"ack without a log sequence: {ack}")
                        fire = False
                        with lock:
                            acked[(ns, ack.id)] = ack.log_sequence
                            if (fault["threshold"] is not None and not fault["claimed"]
                                    and len(acked) >= fault["threshold"]):
                                fault["claimed"] = fire = True
                        left.discard(ack.id)
                        if fire:
                            inject_faults()
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                    grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
            finally:
                with lock:
                    fault["open_streams"] -= 1
            return left

        def text(ns, i):
            return (f"Record {i} of {ns}: the lighthouse keeper Orvan Tesk {i} lives in the "
                    f"harbour town of Miravel {i} and keeps {i % 7 + 2} lamps.")

        for ns in namespaces:
            check(not ingest(ns, [("seed", text(ns, 0))]), f"seed of {ns} not acknowledged")
        # Every replica has applied its shard's seeds before the documents stream in, so the
        # victim's restart resumes from a position inside the log.
        for r in replicas:
            direct = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(r.grpc))
            mine = [ns for ns in namespaces if owners[ns] == r.shard]
            last = max(acked[(ns, "seed")] for ns in mine)
            direct.Get(pb.GetRequest(namespace=mine[0].encode(), id=b"seed",
                                     min_log_sequence=last), metadata=header(mine[0]), timeout=60)

        # Asks through the router, all along.
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
        per_ns = []
        for ns in namespaces:
            mine = [(i, text(ns, int(i.split("-")[1]))) for n, i in docs if n == ns]
            per_ns.append([(ns, mine[j:j + 25]) for j in range(0, len(mine), 25)])
        # Round robin over the namespaces: batch j of each, then batch j + 1 of each.
        batches = [b for j in range(max(map(len, per_ns))) for b in
                   (chunks[j] for chunks in per_ns if j < len(chunks))]
        # The first wave (a batch per namespace) is applied by every replica before the rest is
        # sent, so the killed replica's bank holds documents and its restart resumes from a
        # marker inside them.
        wave = len(namespaces)
        wave_applied = threading.Event()
        resent = {"documents": 0}
        next_batch = {"i": 0}
        fault["threshold"] = len(namespaces) + args.documents // 3
        # The last third of the batches waits for the faults, so writes go on after them too.
        held_back = len(batches) - len(batches) // 3

        def writer():
            while True:
                with lock:
                    if next_batch["i"] >= len(batches):
                        return
                    index = next_batch["i"]
                    ns, batch = batches[index]
                    next_batch["i"] += 1
                if index >= wave:
                    check(wave_applied.wait(300), "the first wave was never applied")
                if index >= held_back:
                    check(fault["fired"].wait(300), "the faults never fired")
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
        wave_ids = [(ns, i) for ns, batch in batches[:wave] for i, _ in batch]
        give_up = time.monotonic() + 300
        while not all(key in acked for key in wave_ids):
            check(time.monotonic() < give_up, "the first wave was not acknowledged in 300 s")
            time.sleep(0.05)
        wave_top = {}
        for r in replicas:
            mine = [key for key in wave_ids if owners[key[0]] == r.shard]
            wave_top[r.shard] = max(acked[key] for key in mine)
            direct = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(r.grpc))
            direct.Get(pb.GetRequest(namespace=mine[0][0].encode(), id=mine[0][1].encode(),
                                     min_log_sequence=wave_top[r.shard]),
                       metadata=header(mine[0][0]), timeout=120)
        print(f"first wave: {len(wave_ids)} documents applied by every replica", flush=True)
        wave_applied.set()

        # The faults (inject_faults, from the stream whose ack makes a third acknowledged): one
        # replica of shard 0 and one NATS server SIGKILLed; the NATS server restarted after 2 s,
        # the replica after 4 s.
        check(fault["fired"].wait(300), f"only {len(acked)} documents acknowledged after 300 s")
        killed_at = fault["killed_at"]
        asks_before = fault["asks_before"]
        print(f"SIGKILL {victim.name} and NATS n2 at {fault['acked_at_kill']} acknowledged "
              f"documents (of {args.documents + len(namespaces)}), {fault['open_at_kill']} ingest "
              f"stream(s) open", flush=True)
        check(fault["open_at_kill"] >= 1, "no ingest stream was open at the kill")
        time.sleep(max(0.0, killed_at + 2 - time.monotonic()))
        nats[2].start()
        time.sleep(max(0.0, killed_at + 4 - time.monotonic()))
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
        check(len(starts) == 1 and int(starts[0]) >= wave_top[victim.shard],
              f"{victim.name}'s restart resumed from {starts}, before the first wave's "
              f"{wave_top[victim.shard]}")
        stop_asking.set()
        for t in askers:
            t.join()
        with lock:
            check(len(acked) == args.documents + len(namespaces),
                  f"{len(acked)} documents acknowledged, expected "
                  f"{args.documents + len(namespaces)}")
        after_kill = len(acked) - fault["acked_at_kill"]
        print(f"{len(acked)} documents acknowledged through HAProxy in {ingest_seconds:.1f} s, "
              f"{after_kill} of them after the kill "
              f"({resent['documents']} sent again after a broken stream or an unstored write)",
              flush=True)
        check(after_kill >= args.documents // 3, f"only {after_kill} writes after the kill")
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

        # Forget goes through the log: one document of each namespace forgotten through HAProxy
        # is gone from every replica of its shard once it has applied the forget's sequence;
        # the other shard's replicas never see it (their counts are their own forgets only).
        forgotten = {}  # ns -> (id, log sequence)
        for ns in namespaces:
            doc_id = next(i for n, i in docs if n == ns)
            got = stub.Forget(pb.ForgetRequest(namespace=ns.encode(), ids=[doc_id.encode()]),
                              metadata=header(ns), timeout=60)
            check(list(got.forgotten) == [doc_id] and got.log_sequence > 0 and got.passages >= 1,
                  f"forget {ns}/{doc_id} through HAProxy: {got}")
            again = stub.Forget(pb.ForgetRequest(namespace=ns.encode(), ids=[doc_id.encode()]),
                                metadata=header(ns), timeout=60)
            check(list(again.not_found) == [doc_id] and again.log_sequence > got.log_sequence,
                  f"forget {ns}/{doc_id} again: {again}")
            forgotten[ns] = (doc_id, got.log_sequence)
        # A forget of a namespace sent straight to a replica of the other shard is refused there,
        # so it never enters that shard's log.
        for r in replicas:
            other = next(ns for ns in namespaces if owners[ns] != r.shard)
            direct = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(r.grpc))
            try:
                direct.Forget(pb.ForgetRequest(namespace=other.encode(), ids=[b"seed"]),
                              timeout=10)
                raise Failure(f"{r.name} took a forget for {other} of shard {owners[other]}")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.FAILED_PRECONDITION,
                      f"{r.name}: a forget of another shard's namespace: {e.code()}")
        for r in replicas:
            direct = pb_grpc.KnowledgeServiceStub(grpc.insecure_channel(r.grpc))
            mine = [ns for ns in namespaces if owners[ns] == r.shard]
            for ns in mine:
                doc_id, seq = forgotten[ns]
                try:
                    direct.Get(pb.GetRequest(namespace=ns.encode(), id=doc_id.encode(),
                                             min_log_sequence=seq), metadata=header(ns),
                               timeout=60)
                    raise Failure(f"{r.name}: {ns}/{doc_id} still there after its forget")
                except grpc.RpcError as e:
                    check(e.code() == grpc.StatusCode.NOT_FOUND,
                          f"{r.name}: get of forgotten {ns}/{doc_id}: {e.code()} {e.details()}")
                number = int(doc_id.split("-")[1])
                found = direct.Search(pb.SearchRequest(
                    namespace=ns.encode(), query=text(ns, number).encode(), top_k=20,
                    retrieval=pb.RETRIEVAL_LEXICAL, min_log_sequence=seq),
                    metadata=header(ns), timeout=60)
                check(found.passages and all(p.document_id != doc_id for p in found.passages),
                      f"{r.name}: search in {ns} after forgetting {doc_id}: "
                      f"{[p.document_id for p in found.passages]}")
            held = {n.name: n.documents
                    for n in direct.Stats(pb.StatsRequest(), timeout=30).namespaces}
            want = {ns: sum(1 for key in acked if key[0] == ns) - 1 for ns in mine}
            check(held == want, f"{r.name} after the forgets holds {held}, expected {want}")
        print(f"forget through HAProxy: 1 document of each of the {len(namespaces)} namespaces "
              f"(sequences {min(q for _, q in forgotten.values())}.."
              f"{max(q for _, q in forgotten.values())}) gone from get and search on every "
              f"replica of its shard, the other shard's counts untouched; sent again: not_found",
              flush=True)

        # A read asking for a log position far beyond the log waits to its deadline and answers
        # DEADLINE_EXCEEDED (the replica's message names how far it has applied), no later.
        beyond = max(q for _, q in forgotten.values()) + 1_000_000
        ns = namespaces[0]
        for what, call in (
                ("ask through HAProxy", lambda t: list(stub.Ask(pb.AskRequest(
                    namespace=ns.encode(), question=b"Where?", mode=pb.ASK_MODE_RAG,
                    max_tokens=4, stream=False, min_log_sequence=beyond),
                    metadata=header(ns), timeout=t))),
                ("search on a replica", lambda t: pb_grpc.KnowledgeServiceStub(
                    grpc.insecure_channel(replicas[owners[ns] * REPLICAS].grpc)).Search(
                    pb.SearchRequest(namespace=ns.encode(), query=b"lamps",
                                     min_log_sequence=beyond),
                    metadata=header(ns), timeout=t))):
            deadline = 2.0
            t0 = time.monotonic()
            try:
                call(deadline)
                raise Failure(f"{what} with min_log_sequence {beyond} answered")
            except grpc.RpcError as e:
                took, details = time.monotonic() - t0, e.details()
                check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
                      f"{what} with min_log_sequence {beyond}: {e.code()} {e.details()}")
                check(deadline - 0.05 <= took <= deadline + 1.0,
                      f"{what} with min_log_sequence {beyond}: answered after {took:.2f} s, "
                      f"deadline {deadline} s")
            print(f"{what} with min_log_sequence {beyond}: DEADLINE_EXCEEDED after {took:.2f} s "
                  f"(deadline {deadline} s): {details}", flush=True)

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
        print(f"counts: acknowledged {len(acked)} ({fault['acked_at_kill']} at the kill, "
              f"{fault['open_at_kill']} streams open), resent {resent['documents']}, asks "
              f"{asks['ok']} ok / {asks['failed']} failed {asks['codes']}, {victim.name} caught up "
              f"{caught_up_at - restarted_at:.1f} s after its restart, forgets "
              f"{len(forgotten)}, asks/s {cluster:.1f} through HAProxy vs {one:.1f} one replica",
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
