"""Sessions through the Python client (client/python) against the real daemon, serving knowd-tiny
with a session mapper written here (random weights: the serving path is under test, not what a
trained mapper learned): create, ask with the session alone and with a memory mode, append, list,
delete, roles, and the errors' types."""
import asyncio
import json
import os
import random
import struct

import pytest

import knowd
from conftest import ADMIN, READER, WRITER, Daemon, env

# knowd-tiny: hidden 192, 6 query heads and 2 key/value heads of 32, intermediate 512, 4 layers.
HIDDEN, Q_DIM, KV_DIM, INTERMEDIATE, LAYERS = 192, 192, 64, 512, 4
RANK = RANK_OUT = 4


def write_safetensors(path, tensors):
    """tensors: [(name, shape, floats)] as an f32 safetensors file."""
    header, data = {}, bytearray()
    for name, shape, values in tensors:
        begin = len(data)
        data += struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [begin, len(data)]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + bytes(data))


def write_adapter(directory):
    """knowd-tiny's adapter files (linked) and a random session mapper."""
    os.makedirs(directory)
    source = os.path.join(env("KNOWD_MODEL"), "adapter")
    for name in os.listdir(source):
        if not name.startswith("session_mapper"):
            os.symlink(os.path.join(source, name), os.path.join(directory, name))
    rng = random.Random(11)
    sites = [(1, "o", Q_DIM, HIDDEN), (LAYERS - 1, "down", INTERMEDIATE, HIDDEN)]
    tensors = []

    def add(name, shape, scale, mean=0.0):
        n = 1
        for d in shape:
            n *= d
        tensors.append((name, shape, [rng.gauss(mean, scale) for _ in range(n)]))

    for i, (_, _, n_in, n_out) in enumerate(sites):
        add(f"site{i}.query", [RANK, KV_DIM], KV_DIM ** -0.5)
        add(f"site{i}.proj", [RANK_OUT, KV_DIM], KV_DIM ** -0.5)
        add(f"site{i}.gate_weight", [RANK_OUT, RANK_OUT], 0.3)
        add(f"site{i}.gate_bias", [RANK_OUT], 0.1, 1.0)
        add(f"site{i}.w2", [RANK, n_in], 2 * n_in ** -0.5)
        add(f"site{i}.w1", [n_out, RANK_OUT], 2.0)
    write_safetensors(os.path.join(directory, "session_mapper.safetensors"), tensors)
    with open(os.path.join(directory, "session_mapper.json"), "w") as f:
        json.dump({"format": "knowd-session-mapper", "version": 1, "rank": RANK,
                   "rank_out": RANK_OUT, "demos_per_chunk": 4, "max_chunk_tokens": 96,
                   "sites": [{"layer": l, "projection": p} for l, p, _, _ in sites]}, f)


def demonstrations(begin, count):
    names = ["Damka Gralinvo", "Coros Zangorbel", "Ruloseth Gilgra", "Yoxi Fenbello",
             "Mivel Damxisa", "Risub Wynlintem", "Invas Temwenvo"]
    jobs = [("accountant", "free"), ("designer", "fun"), ("nurse", "new")]
    return "".join(f"Q: {names[i % len(names)]}: {jobs[i % 3][0]}\nA: {jobs[i % 3][1]}\n"
                   for i in range(begin, begin + count))


@pytest.fixture(scope="module")
def session_daemon(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("knowd-sessions"))
    adapter = os.path.join(directory, "adapter")
    write_adapter(adapter)
    d = Daemon(directory, ["--adapter", adapter])
    yield d
    code = d.stop()
    assert code == 0, f"knowd exited {code}:\n{d.log()}"


def test_create_ask_append_list_delete(session_daemon):
    with knowd.Client(session_daemon.grpc, token=WRITER, namespace="team-a", timeout=120) as c:
        small = c.create_session([demonstrations(0, 4), demonstrations(4, 4)], ttl_seconds=600,
                                 label="occupations")
        assert small.namespace == "team-a" and small.label == "occupations"
        assert small.chunks >= 2 and small.tokens > 0 and small.state_bytes > 0
        assert small.expires_unix == small.updated_unix + 600
        big = c.create_session(demonstrations(0, 64))
        assert big.state_bytes == small.state_bytes and big.chunks > small.chunks

        answer = c.ask("Mivel Damxisa: nurse", session_id=small.id, max_tokens=12)
        assert answer.session_id == small.id and answer.mode == "closed-book"
        again = c.ask("Mivel Damxisa: nurse", session_id=small.id, max_tokens=12)
        assert again.text == answer.text

        appended = c.append_session(small.id, demonstrations(8, 4))
        assert appended.id == small.id and appended.chunks > small.chunks
        assert appended.state_bytes == small.state_bytes

        assert sorted(s.id for s in c.list_sessions()) == sorted([small.id, big.id])
        stats = c.stats("team-a")
        assert (stats.sessions, stats.session_bytes) == (2, 2 * small.state_bytes)
        assert [(n.name, n.sessions, n.session_bytes) for n in stats.namespaces] == [
            ("team-a", 2, 2 * small.state_bytes)]
        c.delete_session(big.id)
        assert (c.stats("team-a").sessions, c.stats("team-a").session_bytes) == (
            1, small.state_bytes)
        with pytest.raises(knowd.NotFound):
            c.delete_session(big.id)
        with pytest.raises(knowd.NotFound):
            c.ask("Mivel Damxisa: nurse", session_id=big.id)
        with pytest.raises(knowd.InvalidArgument):
            c.create_session([""])

    with knowd.Client(session_daemon.grpc, token=READER, namespace="team-a", timeout=120) as r:
        assert [s.id for s in r.list_sessions()] == [small.id]
        assert r.ask("Yoxi Fenbello: designer", session_id=small.id).session_id == small.id
        with pytest.raises(knowd.PermissionDenied):
            r.create_session(demonstrations(0, 2))
        with pytest.raises(knowd.PermissionDenied):
            r.delete_session(small.id)
    with knowd.Client(session_daemon.grpc, token=ADMIN, namespace="team-b", timeout=120) as other:
        with pytest.raises(knowd.NotFound):  # sessions are per namespace
            other.ask("Yoxi Fenbello: designer", session_id=small.id)


def test_async_client_sessions(session_daemon):
    async def run():
        async with knowd.AsyncClient(session_daemon.grpc, token=WRITER, namespace="team-a",
                                     timeout=120) as c:
            s = await c.create_session(demonstrations(0, 8), label="async")
            answer = await c.ask("Coros Zangorbel: designer", session_id=s.id, max_tokens=12)
            assert answer.session_id == s.id
            appended = await c.append_session(s.id, [demonstrations(8, 4)])
            assert appended.chunks > s.chunks and appended.state_bytes == s.state_bytes
            assert s.id in [x.id for x in await c.list_sessions()]
            await c.delete_session(s.id)
            with pytest.raises(knowd.NotFound):
                await c.delete_session(s.id)

    asyncio.run(run())
