"""The synchronous client."""
import grpc

from knowd import _convert as c
from knowd.errors import from_rpc_error


class AskStream:
    """An answer as it is generated: iterating yields its text piece by piece (str); once the
    iteration ends, `answer` is the final Answer (with its citations). `cancel()` stops the
    generation."""

    def __init__(self, call):
        self._call = call
        self.answer = None

    def __iter__(self):
        try:
            for chunk in self._call:
                if chunk.HasField("final"):
                    self.answer = c.answer(chunk.final)
                elif chunk.text:
                    yield chunk.text
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def cancel(self):
        self._call.cancel()


class Client:
    """A connection to a knowd daemon's gRPC API.

    target: "HOST:PORT". token: the bearer token (sent as "authorization: Bearer <token>").
    namespace: the default namespace of every call ("" = the daemon's "default"). timeout: the
    default deadline of a call in seconds (None: none); every call takes its own `timeout` too.
    TLS: tls=True (the system's roots), or root_certificates (PEM bytes or a path), and for mutual
    TLS private_key + certificate_chain; server_name overrides the name checked in the server's
    certificate.
    """

    def __init__(self, target="127.0.0.1:7070", token=None, namespace="", timeout=None, tls=False,
                 root_certificates=None, private_key=None, certificate_chain=None,
                 server_name=None, max_message_bytes=16 * 1024 * 1024):
        options = c.channel_options(max_message_bytes)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = c.credentials(grpc, tls, root_certificates, private_key, certificate_chain)
        self._channel = (grpc.secure_channel(target, creds, options) if creds
                         else grpc.insecure_channel(target, options))
        self._stub = c.pb_grpc.KnowledgeServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.namespace = namespace
        self.timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ns(self, namespace):
        return self.namespace if namespace is None else namespace

    def _timeout(self, timeout):
        return self.timeout if timeout is None else timeout

    def _unary(self, method, request, timeout):
        try:
            return method(request, timeout=self._timeout(timeout), 
                metadata=c.routed(self._metadata, request.namespace))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def ingest(self, docs, namespace=None, timeout=None):
        """Streams `docs` (knowd.Doc, (id, text) pairs or dicts) in over one Ingest stream and
        yields one IngestResult per document, in order, as the daemon acknowledges them: a result
        without `error` means the document is durably stored. A document that fails validation
        gets a result with its error and the stream goes on; a failure of the whole stream (a bad
        token, the daemon shutting down) raises."""
        ns = self._ns(namespace)
        requests = (c.ingest_request(d, ns) for d in docs)
        try:
            for ack in self._stub.Ingest(requests, timeout=self._timeout(timeout),
                                         metadata=c.routed(self._metadata, ns)):
                yield c.ingest_result(ack)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def ingest_one(self, id, text, metadata=None, valid_from_unix=0, namespace=None,
                   timeout=None):
        """Ingests one document; returns its IngestResult, or raises its error."""
        from knowd.types import Doc
        results = list(self.ingest([Doc(id, text, dict(metadata or {}), valid_from_unix)],
                                   namespace, timeout))
        if results[0].error is not None:
            raise results[0].error
        return results[0]

    def _ask_request(self, question, namespace, mode, top_k, rag_passages, retrieval,
                     max_tokens, temperature, top_p, seed, stream, explain, session_id=None):
        return c.ask_request(question, self._ns(namespace), mode, top_k, rag_passages, retrieval,
                             max_tokens, temperature, top_p, seed, stream, explain, session_id)

    def ask(self, question, mode=None, namespace=None, top_k=0, rag_passages=0, retrieval=None,
            max_tokens=0, temperature=0.0, top_p=0.0, seed=0, explain=False, timeout=None,
            session_id=None):
        """Answers `question`; returns the Answer. mode: "closed-book", "mac", "rag", "mac+rag"
        (None: the daemon's default); retrieval: "dense", "lexical", "hybrid" (None: the
        daemon's default); 0 for a number means the daemon's default. session_id: a session
        (create_session) whose update the answer is generated under; alone (mode None) the
        session answers by itself."""
        request = self._ask_request(question, namespace, mode, top_k, rag_passages, retrieval,
                                    max_tokens, temperature, top_p, seed, False, explain,
                                    session_id)
        stream = AskStream(self._stub.Ask(request, timeout=self._timeout(timeout),
                                          metadata=c.routed(self._metadata, request.namespace)))
        for _ in stream:
            pass
        return stream.answer

    def ask_stream(self, question, mode=None, namespace=None, top_k=0, rag_passages=0,
                   retrieval=None, max_tokens=0, temperature=0.0, top_p=0.0, seed=0,
                   explain=False, timeout=None):
        """Like ask, but the answer's text streams as it is generated: returns an AskStream."""
        request = self._ask_request(question, namespace, mode, top_k, rag_passages, retrieval,
                                    max_tokens, temperature, top_p, seed, True, explain)
        return AskStream(self._stub.Ask(request, timeout=self._timeout(timeout),
                                        metadata=c.routed(self._metadata, request.namespace)))

    def search(self, query, top_k=0, retrieval=None, namespace=None, timeout=None):
        """The passages most relevant to `query`, best first (retrieval only): a SearchResult."""
        request = c.pb.SearchRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                     query=c.utf8(query, "query"), top_k=top_k,
                                     retrieval=c.retrieval(retrieval))
        return c.search_result(self._unary(self._stub.Search, request, timeout))

    def get(self, id, namespace=None, timeout=None):
        """A stored Document; raises NotFound when the id is unknown in the namespace."""
        request = c.pb.GetRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                  id=c.utf8(id, "id"))
        return c.document(self._unary(self._stub.Get, request, timeout))

    def forget(self, *ids, namespace=None, timeout=None):
        """Removes documents completely; returns a ForgetResult (unknown ids in not_found)."""
        request = c.pb.ForgetRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                     ids=[c.utf8(i, "id") for i in ids])
        return c.forget_result(self._unary(self._stub.Forget, request, timeout))

    def stats(self, namespace=None, timeout=None):
        """Counts and sizes of the bank (namespace None or "": every namespace the token may
        read), and what the daemon serves."""
        request = c.pb.StatsRequest(namespace=c.utf8(namespace or "", "namespace"))
        return c.stats(self._unary(self._stub.Stats, request, timeout))

    def _session_stream(self, method, chunks, timeout):
        try:
            return c.session(method(iter(chunks), timeout=self._timeout(timeout),
                                    metadata=c.routed(self._metadata, chunks[0].namespace)))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def create_session(self, texts, ttl_seconds=0, label="", namespace=None, timeout=None):
        """Absorbs `texts` (a str, or chunks in order: each ends a chunk) into a new session;
        returns its Session. ttl_seconds: how long it lives after its last write (0: the
        daemon's default)."""
        chunks = c.session_chunks(texts, self._ns(namespace), "", ttl_seconds, label)
        return self._session_stream(self._stub.CreateSession, chunks, timeout)

    def append_session(self, session_id, texts, ttl_seconds=0, namespace=None, timeout=None):
        """Absorbs more text into a session; returns the Session (the same state_bytes)."""
        chunks = c.session_chunks(texts, self._ns(namespace), session_id, ttl_seconds)
        return self._session_stream(self._stub.AppendSession, chunks, timeout)

    def delete_session(self, session_id, namespace=None, timeout=None):
        """Removes a session; raises NotFound when it is unknown or expired."""
        request = c.pb.DeleteSessionRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                            session_id=c.utf8(session_id, "session_id"))
        self._unary(self._stub.DeleteSession, request, timeout)

    def list_sessions(self, namespace=None, timeout=None):
        """The namespace's live sessions (a list of Session, by id)."""
        request = c.pb.ListSessionsRequest(namespace=c.utf8(self._ns(namespace), "namespace"))
        response = self._unary(self._stub.ListSessions, request, timeout)
        return [c.session(s) for s in response.sessions]
