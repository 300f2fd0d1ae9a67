"""The asyncio client (grpc.aio): the same calls as Client, as coroutines and async iterators."""
import grpc
import grpc.aio

from knowd import _convert as c
from knowd.errors import from_rpc_error
from knowd.types import Doc


class AsyncAskStream:
    """An answer as it is generated: `async for` yields its text pieces; then `answer` is the
    final Answer. `cancel()` stops the generation."""

    def __init__(self, call):
        self._call = call
        self.answer = None

    async def __aiter__(self):
        try:
            async for chunk in self._call:
                if chunk.HasField("final"):
                    self.answer = c.answer(chunk.final)
                elif chunk.text:
                    yield chunk.text
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def cancel(self):
        self._call.cancel()


class AsyncClient:
    """Client's asyncio twin: the same arguments; use `async with` or `await close()`."""

    def __init__(self, target="127.0.0.1:7070", token=None, namespace="", timeout=None, tls=False,
                 root_certificates=None, private_key=None, certificate_chain=None,
                 server_name=None, max_message_bytes=16 * 1024 * 1024):
        options = c.channel_options(max_message_bytes)
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = c.credentials(grpc, tls, root_certificates, private_key, certificate_chain)
        self._channel = (grpc.aio.secure_channel(target, creds, options) if creds
                         else grpc.aio.insecure_channel(target, options))
        self._stub = c.pb_grpc.KnowledgeServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self.namespace = namespace
        self.timeout = timeout

    async def close(self):
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _ns(self, namespace):
        return self.namespace if namespace is None else namespace

    def _timeout(self, timeout):
        return self.timeout if timeout is None else timeout

    async def _unary(self, method, request, timeout):
        try:
            return await method(request, timeout=self._timeout(timeout), 
                metadata=c.routed(self._metadata, request.namespace))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def ingest(self, docs, namespace=None, timeout=None):
        """Async iterator of one IngestResult per document (docs: an iterable or async
        iterable of knowd.Doc, (id, text) pairs or dicts)."""
        ns = self._ns(namespace)

        async def requests():
            if hasattr(docs, "__aiter__"):
                async for d in docs:
                    yield c.ingest_request(d, ns)
            else:
                for d in docs:
                    yield c.ingest_request(d, ns)

        try:
            async for ack in self._stub.Ingest(requests(), timeout=self._timeout(timeout),
                                               metadata=c.routed(self._metadata, ns)):
                yield c.ingest_result(ack)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def ingest_one(self, id, text, metadata=None, valid_from_unix=0, namespace=None,
                         timeout=None):
        results = [r async for r in self.ingest(
            [Doc(id, text, dict(metadata or {}), valid_from_unix)], namespace, timeout)]
        if results[0].error is not None:
            raise results[0].error
        return results[0]

    def _ask(self, question, namespace, mode, top_k, rag_passages, retrieval, max_tokens,
             temperature, top_p, seed, stream, explain, timeout, session_id=None):
        request = c.ask_request(question, self._ns(namespace), mode, top_k, rag_passages,
                                retrieval, max_tokens, temperature, top_p, seed, stream, explain,
                                session_id)
        return AsyncAskStream(self._stub.Ask(request, timeout=self._timeout(timeout),
                                             metadata=c.routed(self._metadata, request.namespace)))

    async def ask(self, question, mode=None, namespace=None, top_k=0, rag_passages=0,
                  retrieval=None, max_tokens=0, temperature=0.0, top_p=0.0, seed=0,
                  explain=False, timeout=None, session_id=None):
        stream = self._ask(question, namespace, mode, top_k, rag_passages, retrieval, max_tokens,
                           temperature, top_p, seed, False, explain, timeout, session_id)
        async for _ in stream:
            pass
        return stream.answer

    def ask_stream(self, question, mode=None, namespace=None, top_k=0, rag_passages=0,
                   retrieval=None, max_tokens=0, temperature=0.0, top_p=0.0, seed=0,
                   explain=False, timeout=None, session_id=None):
        return self._ask(question, namespace, mode, top_k, rag_passages, retrieval, max_tokens,
                         temperature, top_p, seed, True, explain, timeout, session_id)

    async def search(self, query, top_k=0, retrieval=None, namespace=None, timeout=None):
        request = c.pb.SearchRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                     query=c.utf8(query, "query"), top_k=top_k,
                                     retrieval=c.retrieval(retrieval))
        return c.search_result(await self._unary(self._stub.Search, request, timeout))

    async def get(self, id, namespace=None, timeout=None):
        request = c.pb.GetRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                  id=c.utf8(id, "id"))
        return c.document(await self._unary(self._stub.Get, request, timeout))

    async def forget(self, *ids, namespace=None, timeout=None):
        request = c.pb.ForgetRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                     ids=[c.utf8(i, "id") for i in ids])
        return c.forget_result(await self._unary(self._stub.Forget, request, timeout))

    async def stats(self, namespace=None, timeout=None):
        request = c.pb.StatsRequest(namespace=c.utf8(namespace or "", "namespace"))
        return c.stats(await self._unary(self._stub.Stats, request, timeout))

    async def _session_stream(self, method, chunks, timeout):
        try:
            return c.session(await method(iter(chunks), timeout=self._timeout(timeout),
                                          metadata=c.routed(self._metadata, chunks[0].namespace)))
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    async def create_session(self, texts, ttl_seconds=0, label="", namespace=None, timeout=None):
        chunks = c.session_chunks(texts, self._ns(namespace), "", ttl_seconds, label)
        return await self._session_stream(self._stub.CreateSession, chunks, timeout)

    async def append_session(self, session_id, texts, ttl_seconds=0, namespace=None,
                             timeout=None):
        chunks = c.session_chunks(texts, self._ns(namespace), session_id, ttl_seconds)
        return await self._session_stream(self._stub.AppendSession, chunks, timeout)

    async def delete_session(self, session_id, namespace=None, timeout=None):
        request = c.pb.DeleteSessionRequest(namespace=c.utf8(self._ns(namespace), "namespace"),
                                            session_id=c.utf8(session_id, "session_id"))
        await self._unary(self._stub.DeleteSession, request, timeout)

    async def list_sessions(self, namespace=None, timeout=None):
        request = c.pb.ListSessionsRequest(namespace=c.utf8(self._ns(namespace), "namespace"))
        response = await self._unary(self._stub.ListSessions, request, timeout)
        return [c.session(s) for s in response.sessions]
