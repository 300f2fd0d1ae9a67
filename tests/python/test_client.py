"""The Python client (client/python, package `knowd`) over gRPC against the real daemon: ingest
with per-document results, ask (streamed and not), search, get, forget, stats, typed errors with
their status codes, timeouts, and the asyncio client."""
import asyncio

import grpc
import pytest

import knowd
from conftest import ADMIN, READER, WRITER, world_passages, world_questions


def passage(pid):
    return next(p for p in world_passages() if p["id"] == pid)


def test_ingest_ask_search_forget_round_trip(daemon):
    q = world_questions()[0]  # In which city does Etheth Rulhal live? -> Ethdamith
    p = passage(q["passage_id"])
    other = passage("test-p1")
    with knowd.Client(daemon.grpc, token=ADMIN, namespace="py", timeout=120) as client:
        results = list(client.ingest([
            knowd.Doc(p["id"], p["text"], p["metadata"]),
            ("", "an empty id is refused"),
            {"id": other["id"], "text": other["text"]},
        ]))
        assert [(r.id, r.position, r.ok) for r in results] == [
            (p["id"], 0, True), ("", 1, False), (other["id"], 2, True)]
        assert results[0].passages == 1 and results[0].replaced is False
        assert isinstance(results[1].error, knowd.InvalidArgument)
        assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "document id" in results[1].error.message

        answer = client.ask(q["question"], mode="rag")
        assert answer.text == q["answer"] == "Ethdamith"
        assert answer.mode == "rag" and answer.nothing_in_memory is False
        assert [(c.document_id, c.index) for c in answer.citations] == [(p["id"], 0)]
        assert answer.citations[0].text == p["text"]
        assert answer.citations[0].metadata == p["metadata"]
        assert answer.timings.generated_tokens > 0 and answer.stop_reason in ("eos", "newline")

        stream = client.ask_stream(q["question"], mode="rag")
        pieces = list(stream)
        assert len(pieces) > 1 and "".join(pieces) == stream.answer.text == answer.text
        assert stream.answer.citations == answer.citations

        # Lexical retrieval finds only passages that share the question's words.
        found = client.search(q["question"], top_k=2, retrieval="lexical")
        assert [h.document_id for h in found.passages] == [p["id"]]
        assert found.passages[0].score > 0 and found.passages[0].text == p["text"]
        found = client.search(other["text"], top_k=2, retrieval="lexical")
        assert [h.document_id for h in found.passages] == [other["id"], p["id"]]
        assert found.passages[0].score > found.passages[1].score > 0

        document = client.get(p["id"])
        assert document.text == p["text"] and document.metadata == p["metadata"]
        assert document.namespace == "py"

        stats = client.stats("py")
        assert (stats.documents, stats.passages) == (2, 2)
        assert [(n.name, n.documents) for n in stats.namespaces] == [("py", 2)]

        forgotten = client.forget(p["id"], "never-stored")
        assert (forgotten.forgotten, forgotten.not_found, forgotten.passages) == (
            [p["id"]], ["never-stored"], 1)
        with pytest.raises(knowd.NotFound) as e:
            client.get(p["id"])
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert [h.document_id for h in client.search(other["text"], top_k=2).passages] == [
            other["id"]]
        client.forget(other["id"])
        # Memory asked in a namespace that now holds nothing is an error, not a guess.
        with pytest.raises(knowd.NotFound):
            client.ask(q["question"], mode="mac+rag")
        assert client.ask(q["question"], mode="closed-book").citations == []


def test_typed_errors_tokens_and_timeouts(daemon):
    with knowd.Client(daemon.grpc, namespace="team-a") as anonymous:
        with pytest.raises(knowd.Unauthenticated) as e:
            anonymous.stats()
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with knowd.Client(daemon.grpc, token="wrong", namespace="team-a") as wrong:
        with pytest.raises(knowd.Unauthenticated):
            list(wrong.ingest([("x", "y")]))
    with knowd.Client(daemon.grpc, token=READER, namespace="team-a", timeout=60) as reader:
        # A document the token may not write gets its own error; the stream goes on.
        [result] = list(reader.ingest([("r-1", "Readers cannot write.")]))
        assert isinstance(result.error, knowd.PermissionDenied)
        with pytest.raises(knowd.PermissionDenied):
            reader.ingest_one("r-2", "Readers cannot write.")
        with pytest.raises(knowd.PermissionDenied):
            reader.search("x", namespace="team-b")
        with pytest.raises(knowd.InvalidArgument) as e:
            reader.search("")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError):
            reader.ask("x", mode="psychic")
    # Timeouts: the client's default applies to every call, a call's own overrides it. (A
    # deadline already past fails every time; gRPC may still complete a call given 1 us.)
    with knowd.Client(daemon.grpc, token=READER, namespace="team-a", timeout=-1) as expired:
        with pytest.raises(knowd.DeadlineExceeded) as e:
            expired.stats()
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(knowd.DeadlineExceeded):
            expired.ask("In which city does Etheth Rulhal live?", mode="closed-book")
        assert expired.stats(timeout=60).version
    with knowd.Client(daemon.grpc, token=WRITER, namespace="team-a") as writer:
        result = writer.ingest_one("w-1", "Writers may write in team-a.", {"k": "v"})
        assert result.ok and result.passages == 1
        assert writer.forget("w-1").forgotten == ["w-1"]


def test_async_client(daemon):
    q = world_questions()[1]  # Whom did Etheth Rulhal marry? -> Korlem Ulashor
    p = passage(q["passage_id"])

    async def run():
        async with knowd.AsyncClient(daemon.grpc, token=ADMIN, namespace="py-async",
                                     timeout=120) as client:
            results = [r async for r in client.ingest([knowd.Doc(p["id"], p["text"])])]
            assert [(r.id, r.ok, r.passages) for r in results] == [(p["id"], True, 1)]
            answer = await client.ask(q["question"], mode="rag")
            stream = client.ask_stream(q["question"], mode="rag")
            pieces = [t async for t in stream]
            found = await client.search(q["question"], top_k=1)
            document = await client.get(p["id"])
            forgotten = await client.forget(p["id"])
            try:
                await client.get(p["id"])
                missing = None
            except knowd.NotFound as e:
                missing = e
            return answer, pieces, stream.answer, found, document, forgotten, missing

    answer, pieces, streamed, found, document, forgotten, missing = asyncio.run(run())
    assert answer.text == q["answer"] == "Korlem Ulashor"
    assert "".join(pieces) == streamed.text == answer.text
    assert [c.document_id for c in answer.citations] == [p["id"]]
    assert found.passages[0].document_id == p["id"]
    assert document.text == p["text"]
    assert forgotten.forgotten == [p["id"]]
    assert missing is not None and missing.code == grpc.StatusCode.NOT_FOUND
