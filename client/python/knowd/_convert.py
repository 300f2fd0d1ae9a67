"""Between the package's types and the proto messages (shared by Client and AsyncClient)."""
from knowd.errors import error_of
from knowd.types import (Answer, Doc, Document, ForgetResult, IngestResult, NamespaceStats,
                         Passage, SearchResult, Session, Stats, Timings)

try:
    from knowd.v1 import knowd_pb2 as pb
    from knowd.v1 import knowd_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - a checkout without generated stubs
    raise ImportError(
        "knowd's gRPC stubs (knowd.v1) are missing: install the package (pip install "
        "client/python), or generate them with `python3 client/python/generate_stubs.py DIR` and "
        "put DIR on sys.path") from e

MODES = {
    None: pb.ASK_MODE_UNSPECIFIED,
    "": pb.ASK_MODE_UNSPECIFIED,
    "closed-book": pb.ASK_MODE_CLOSED_BOOK,
    "mac": pb.ASK_MODE_MAC,
    "rag": pb.ASK_MODE_RAG,
    "mac+rag": pb.ASK_MODE_MAC_RAG,
}
MODE_NAMES = {v: k for k, v in MODES.items() if k}
RETRIEVALS = {
    None: pb.RETRIEVAL_UNSPECIFIED,
    "": pb.RETRIEVAL_UNSPECIFIED,
    "dense": pb.RETRIEVAL_DENSE,
    "lexical": pb.RETRIEVAL_LEXICAL,
    "hybrid": pb.RETRIEVAL_HYBRID,
}


def routed(metadata, namespace):
    """The call's metadata plus the namespace header a cluster's router sends it by
    (proto/knowd/v1/knowd.proto, "Cluster routing"); "" is the namespace "default"."""
    if isinstance(namespace, bytes):
        namespace = namespace.decode("utf-8", "replace")
    return list(metadata) + [("x-knowd-namespace", namespace or "default")]


def utf8(value, name):
    """A `str` as the UTF-8 bytes of a proto `bytes` field."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value.encode("utf-8")


def mode(value):
    try:
        return MODES[value]
    except KeyError:
        raise ValueError(f"mode must be closed-book, mac, rag or mac+rag, not {value!r}") from None


def retrieval(value):
    try:
        return RETRIEVALS[value]
    except KeyError:
        raise ValueError(f"retrieval must be dense, lexical or hybrid, not {value!r}") from None


def as_doc(item):
    """A Doc from a Doc, a (id, text) pair or a dict {"id", "text", "metadata", ...}."""
    if isinstance(item, Doc):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return Doc(item[0], item[1])
    if isinstance(item, dict):
        return Doc(item["id"], item["text"], dict(item.get("metadata") or {}),
                   int(item.get("valid_from_unix", item.get("validFromUnix", 0)) or 0))
    raise TypeError(f"a document is a knowd.Doc, an (id, text) pair or a dict, not {item!r}")


def ingest_request(item, namespace):
    doc = as_doc(item)
    return pb.IngestRequest(
        namespace=utf8(namespace, "namespace"), id=utf8(doc.id, "id"),
        text=utf8(doc.text, "text"),
        metadata={k: utf8(v, f"metadata[{k!r}]") for k, v in doc.metadata.items()},
        valid_from_unix=doc.valid_from_unix)


def ingest_result(ack):
    return IngestResult(
        id=ack.id, position=ack.position, passages=ack.passages, replaced=ack.replaced,
        error=error_of(ack.error_code, ack.error_message) if ack.error_code else None)


def ask_request(question, namespace, mode_name, top_k, rag_passages, retrieval_name, max_tokens,
                temperature, top_p, seed, stream, explain, session_id=None):
    return pb.AskRequest(
        namespace=utf8(namespace, "namespace"), question=utf8(question, "question"),
        mode=mode(mode_name), top_k=top_k, rag_passages=rag_passages,
        retrieval=retrieval(retrieval_name), max_tokens=max_tokens, temperature=temperature,
        top_p=top_p, seed=seed, stream=stream, explain=explain,
        session_id=utf8(session_id or "", "session_id"))


def session_chunks(texts, namespace, session_id="", ttl_seconds=0, label=""):
    """The SessionChunk messages of a CreateSession/AppendSession stream: one per text (a str is
    one text), the first with the namespace, session id, TTL and label."""
    if isinstance(texts, (str, bytes)):
        texts = [texts]
    chunks = [pb.SessionChunk(text=utf8(t, "text")) for t in texts]
    if not chunks:
        raise ValueError("a session needs at least one text")
    first = chunks[0]
    first.namespace = utf8(namespace, "namespace")
    first.session_id = utf8(session_id, "session_id")
    first.ttl_seconds = ttl_seconds
    first.label = utf8(label, "label")
    return chunks


def session(s):
    return Session(id=s.id, namespace=s.namespace, label=s.label, state_bytes=s.state_bytes,
                   chunks=s.chunks, tokens=s.tokens, created_unix=s.created_unix,
                   updated_unix=s.updated_unix, expires_unix=s.expires_unix,
                   mapper_sha256=s.mapper_sha256)


def passage(p):
    return Passage(document_id=p.document_id, index=p.index, text=p.text, score=p.score,
                   metadata=dict(p.metadata), ingest_time_unix=p.ingest_time_unix,
                   valid_from_unix=p.valid_from_unix)


def answer(final):
    t = final.timings
    return Answer(
        text=final.answer, mode=MODE_NAMES.get(final.mode, str(final.mode)),
        citations=[passage(p) for p in final.cited], stop_reason=final.stop_reason,
        nothing_in_memory=final.nothing_in_memory, relevance=final.relevance,
        timings=Timings(t.queue_ms, t.retrieval_ms, t.modulation_ms, t.prefill_ms, t.decode_ms,
                        t.total_ms, t.prompt_tokens, t.generated_tokens),
        metadata_trimmed=final.metadata_trimmed,
        prompt=final.explain.prompt if final.HasField("explain") else None,
        session_id=final.session_id)


def search_result(response):
    return SearchResult([passage(p) for p in response.passages], response.took_ms,
                        response.metadata_trimmed)


def document(d):
    return Document(id=d.id, namespace=d.namespace, passages=[passage(p) for p in d.passages],
                    metadata=dict(d.metadata), ingest_time_unix=d.ingest_time_unix,
                    valid_from_unix=d.valid_from_unix, truncated=d.truncated)


def forget_result(r):
    return ForgetResult(list(r.forgotten), list(r.not_found), r.passages)


def stats(s):
    return Stats(
        documents=s.documents, passages=s.passages,
        namespaces=[NamespaceStats(n.name, n.documents, n.passages, n.sessions, n.session_bytes)
                    for n in s.namespaces],
        disk_bytes=s.disk_bytes, modulation_bytes=s.modulation_bytes,
        bytes_per_modulation=s.bytes_per_modulation, model=s.model, adapter=s.adapter,
        fingerprint=s.fingerprint, version=s.version, uptime_seconds=s.uptime_seconds,
        kv_bytes_per_median_passage=s.kv_bytes_per_median_passage,
        recovery_warning=s.recovery_warning, sessions=s.sessions, session_bytes=s.session_bytes)


def channel_options(max_message_bytes):
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


def credentials(grpc, tls, root_certificates, private_key, certificate_chain):
    """grpc.ssl_channel_credentials when TLS is asked for (any certificate given implies it)."""
    if not (tls or root_certificates or private_key or certificate_chain):
        return None

    def read(value):
        if value is None or isinstance(value, bytes):
            return value
        with open(value, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(root_certificates), read(private_key),
                                        read(certificate_chain))
