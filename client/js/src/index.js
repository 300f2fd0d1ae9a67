// The JavaScript client of a knowd daemon, over its gRPC API (proto/knowd/v1/knowd.proto, loaded
// at run time by @grpc/proto-loader: no generated code). Text goes in and comes out as strings;
// every failed call rejects with a KnowdError subclass carrying the gRPC status code and the HTTP
// status the daemon's HTTP APIs give the same code.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));

// The proto: the one packed beside the sources (npm pack copies it), else the repository's.
function defaultProtoPath() {
  for (const candidate of [
    path.join(here, '..', 'proto', 'knowd', 'v1', 'knowd.proto'),
    path.join(here, '..', '..', '..', 'proto', 'knowd', 'v1', 'knowd.proto'),
  ]) {
    if (fs.existsSync(candidate)) return candidate;
  }
  throw new Error('knowd.proto not found: pass protoPath to KnowdClient');
}

const services = new Map();
function serviceOf(protoPath) {
  let service = services.get(protoPath);
  if (!service) {
    const definition = protoLoader.loadSync(protoPath, {
      keepCase: false,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    service = grpc.loadPackageDefinition(definition).knowd.v1.KnowledgeService;
    services.set(protoPath, service);
  }
  return service;
}

// ---- errors ----

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

// The HTTP status of a gRPC code: the mapping of the daemon's REST and OpenAI-compatible APIs.
const HTTP_STATUS = {
  0: 200, 1: 499, 3: 400, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501,
  14: 503, 4: 504, 16: 401,
};

/** A failed call: `code` is the gRPC status code (a number, grpc.status), `codeName` its name,
 * `status` the HTTP status knowd's HTTP APIs answer the same code with, `message` the daemon's
 * explanation. */
export class KnowdError extends Error {
  constructor(code, message) {
    super(`${CODE_NAMES[code] ?? code}: ${message}`);
    this.name = new.target.name;
    this.code = code;
    this.codeName = CODE_NAMES[code] ?? 'UNKNOWN';
    this.status = HTTP_STATUS[code] ?? 500;
    this.details = message;
  }
}
/** Empty, oversized or invalid text; a bad id, mode or topK. */
export class InvalidArgument extends KnowdError {}
/** An unknown document id; memory asked in a namespace that holds no documents. */
export class NotFound extends KnowdError {}
/** No token, or one the daemon does not know (HTTP 401). */
export class Unauthenticated extends KnowdError {}
/** The token lacks the role or the namespace (HTTP 403). */
export class PermissionDenied extends KnowdError {}
/** A queue of the daemon is full (retry with backoff), or a message is too large. */
export class ResourceExhausted extends KnowdError {}
/** The daemon is unreachable or shutting down. */
export class Unavailable extends KnowdError {}
/** The call's timeout passed; the daemon abandoned the work. */
export class DeadlineExceeded extends KnowdError {}

const ERROR_CLASSES = {
  3: InvalidArgument,
  5: NotFound,
  16: Unauthenticated,
  7: PermissionDenied,
  8: ResourceExhausted,
  14: Unavailable,
  4: DeadlineExceeded,
};

/** The KnowdError subclass for a gRPC status code. */
export function errorOf(code, message) {
  const Class = ERROR_CLASSES[code] ?? KnowdError;
  return new Class(code, message);
}

function fromServiceError(e) {
  if (e instanceof KnowdError || typeof e?.code !== 'number') return e;
  return errorOf(e.code, e.details ?? e.message);
}

// ---- conversions ----

const MODES = {
  'closed-book': 'ASK_MODE_CLOSED_BOOK',
  closed_book: 'ASK_MODE_CLOSED_BOOK',
  mac: 'ASK_MODE_MAC',
  rag: 'ASK_MODE_RAG',
  'mac+rag': 'ASK_MODE_MAC_RAG',
  mac_rag: 'ASK_MODE_MAC_RAG',
};
const MODE_NAMES = {
  ASK_MODE_CLOSED_BOOK: 'closed-book',
  ASK_MODE_MAC: 'mac',
  ASK_MODE_RAG: 'rag',
  ASK_MODE_MAC_RAG: 'mac+rag',
};
const RETRIEVALS = { dense: 'RETRIEVAL_DENSE', lexical: 'RETRIEVAL_LEXICAL', hybrid: 'RETRIEVAL_HYBRID' };

function mode(value) {
  if (value === undefined || value === null || value === '') return 'ASK_MODE_UNSPECIFIED';
  const m = MODES[String(value).toLowerCase()];
  if (!m) throw new InvalidArgument(3, `unknown mode "${value}" (closed-book, mac, rag, mac+rag)`);
  return m;
}

function retrieval(value) {
  if (value === undefined || value === null || value === '') return 'RETRIEVAL_UNSPECIFIED';
  const r = RETRIEVALS[String(value).toLowerCase()];
  if (!r) throw new InvalidArgument(3, `unknown retrieval "${value}" (dense, lexical, hybrid)`);
  return r;
}

// The proto's request text fields are `bytes`: UTF-8 Buffers (a string would be read as base64).
const utf8 = (s) => Buffer.from(String(s ?? ''), 'utf8');

function passage(p) {
  return {
    documentId: p.documentId,
    index: p.index,
    text: p.text,
    score: p.score,
    metadata: { ...p.metadata },
    ingestTimeUnix: p.ingestTimeUnix,
    validFromUnix: p.validFromUnix,
  };
}

function answer(f) {
  return {
    text: f.answer,
    mode: MODE_NAMES[f.mode] ?? f.mode,
    citations: (f.cited ?? []).map(passage),
    stopReason: f.stopReason,
    nothingInMemory: f.nothingInMemory,
    relevance: f.relevance,
    metadataTrimmed: f.metadataTrimmed,
    timings: f.timings ?? null,
    explain: f.explain ?? null,
    sessionId: f.sessionId ?? '',
  };
}

function ingestRequest(doc, namespace) {
  if (Array.isArray(doc)) doc = { id: doc[0], text: doc[1] };
  const metadata = {};
  for (const [k, v] of Object.entries(doc.metadata ?? {})) metadata[k] = utf8(v);
  return {
    namespace: utf8(namespace),
    id: utf8(doc.id),
    text: utf8(doc.text),
    metadata,
    validFromUnix: doc.validFromUnix ?? 0,
  };
}

function ingestResult(ack) {
  return {
    id: ack.id,
    position: ack.position,
    passages: ack.passages,
    replaced: ack.replaced,
    ok: ack.errorCode === 0,
    error: ack.errorCode === 0 ? null : errorOf(ack.errorCode, ack.errorMessage),
  };
}

/** An answer as it is generated: `for await (const piece of stream)` yields its text piece by
 * piece; once the iteration ends, `stream.answer` is the final Answer with its citations.
 * `cancel()` stops the generation; `done` resolves to the final Answer. */
export class AskStream {
  constructor(call) {
    this.call = call;
    this.answer = null;
    this.pieces = this.#pieces();
    this.done = null;
  }

  async *#pieces() {
    try {
      for await (const chunk of this.call) {
        if (chunk.final) this.answer = answer(chunk.final);
        else if (chunk.text) yield chunk.text;
      }
    } catch (e) {
      throw fromServiceError(e);
    }
  }

  [Symbol.asyncIterator]() {
    return this.pieces;
  }

  /** Reads the stream to its end and resolves to the final Answer. */
  async finish() {
    for await (const _ of this.pieces); // eslint-disable-line no-unused-vars
    return this.answer;
  }

  cancel() {
    this.call.cancel();
  }
}

/** A connection to a knowd daemon's gRPC API.
 *
 * options: target ("HOST:PORT", default 127.0.0.1:7070), token (sent as "authorization: Bearer
 * <token>"), namespace (of every call unless a call names one; "" = "default"), timeoutMs (each
 * call's deadline; 0 = none), TLS: tls (true: the system's roots) or rootCerts (PEM Buffer or a
 * path) with privateKey + certChain for mutual TLS, serverName to override the name checked;
 * protoPath (knowd.proto); maxMessageBytes (16 MiB). */
export class KnowdClient {
  constructor(options = {}) {
    const {
      target = '127.0.0.1:7070',
      token = null,
      namespace = '',
      timeoutMs = 0,
      tls = false,
      rootCerts = null,
      privateKey = null,
      certChain = null,
      serverName = null,
      protoPath = defaultProtoPath(),
      maxMessageBytes = 16 * 1024 * 1024,
    } = options;
    const read = (v) => (v === null || Buffer.isBuffer(v) ? v : fs.readFileSync(v));
    const secure = tls || rootCerts || privateKey || certChain;
    const credentials = secure
      ? grpc.credentials.createSsl(read(rootCerts), read(privateKey), read(certChain))
      : grpc.credentials.createInsecure();
    const channelOptions = {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
    };
    if (serverName) channelOptions['grpc.ssl_target_name_override'] = serverName;
    const Service = serviceOf(protoPath);
    this.stub = new Service(target, credentials, channelOptions);
    this.token = token;
    this.namespace = namespace;
    this.timeoutMs = timeoutMs;
  }

  close() {
    this.stub.close();
  }

  // The token, and the namespace a cluster's router sends the call by (knowd.proto, "Cluster
  // routing"; "" is the namespace "default").
  #metadata(namespace) {
    const m = new grpc.Metadata();
    if (this.token) m.set('authorization', `Bearer ${this.token}`);
    m.set('x-knowd-namespace', namespace || 'default');
    return m;
  }

  #callOptions(opts) {
    const ms = opts?.timeoutMs ?? this.timeoutMs;
    return ms ? { deadline: new Date(Date.now() + ms) } : {};
  }

  #ns(opts) {
    return opts?.namespace ?? this.namespace;
  }

  #unary(method, request, opts) {
    return new Promise((resolve, reject) => {
      const metadata = this.#metadata(request.namespace?.toString());
      this.stub[method](request, metadata, this.#callOptions(opts), (err, response) =>
        err ? reject(fromServiceError(err)) : resolve(response),
      );
    });
  }

  /** Streams `docs` ({id, text, metadata, validFromUnix} objects or [id, text] pairs; an array,
   * iterable or async iterable) over one Ingest stream and yields one IngestResult per document,
   * in order, as the daemon acknowledges it: `ok` means durably stored; otherwise `error` is the
   * document's KnowdError and the stream goes on. A failure of the whole stream (a bad token,
   * the daemon going away) throws. */
  async *ingest(docs, opts = {}) {
    const namespace = this.#ns(opts);
    const call = this.stub.Ingest(this.#metadata(namespace), this.#callOptions(opts));
    let writeError = null;
    let stopped = false;
    const stop = () => {
      stopped = true;
      call.emit('knowd-stop');
    };
    const writer = (async () => {
      try {
        for await (const doc of docs) {
          if (stopped) return;
          if (!call.write(ingestRequest(doc, namespace))) {
            await new Promise((resolve) => {
              call.once('drain', resolve);
              call.once('knowd-stop', resolve);
            });
          }
        }
      } catch (e) {
        writeError = e;
        call.cancel();
        return;
      }
      if (!stopped) call.end();
    })();
    let finished = false;
    try {
      for await (const ack of call) yield ingestResult(ack);
      finished = true;
    } catch (e) {
      finished = true;
      if (writeError) throw writeError;
      throw fromServiceError(e);
    } finally {
      stop();
      if (!finished) call.cancel(); // the caller stopped reading
      await writer;
    }
    if (writeError) throw writeError;
  }

  /** Ingests one document; resolves to its IngestResult or rejects with its error. */
  async ingestOne(doc, opts = {}) {
    for await (const result of this.ingest([doc], opts)) {
      if (result.error) throw result.error;
      return result;
    }
    throw new Unavailable(14, 'the daemon acknowledged nothing');
  }

  #askRequest(question, opts) {
    return {
      namespace: utf8(this.#ns(opts)),
      question: utf8(question),
      mode: mode(opts.mode),
      topK: opts.topK ?? 0,
      ragPassages: opts.ragPassages ?? 0,
      retrieval: retrieval(opts.retrieval),
      maxTokens: opts.maxTokens ?? 0,
      temperature: opts.temperature ?? 0,
      topP: opts.topP ?? 0,
      seed: opts.seed ?? 0,
      explain: opts.explain ?? false,
      sessionId: utf8(opts.sessionId ?? ''),
    };
  }

  /** Asks a question and resolves to the final Answer: {text, mode, citations, stopReason,
   * nothingInMemory, relevance, timings, ...}. opts: mode ("closed-book", "mac", "rag",
   * "mac+rag"; absent: the daemon's default), topK, ragPassages, retrieval ("dense", "lexical",
   * "hybrid"), maxTokens, temperature, topP, seed, explain, namespace, timeoutMs, sessionId (a
   * session whose update the answer is generated under: alone, without a mode, the session
   * answers by itself). */
  async ask(question, opts = {}) {
    const request = { ...this.#askRequest(question, opts), stream: false };
    const metadata = this.#metadata(request.namespace?.toString());
    return new AskStream(this.stub.Ask(request, metadata, this.#callOptions(opts))).finish();
  }

  /** Asks a question and streams the answer: an AskStream (same options as ask). */
  askStream(question, opts = {}) {
    const request = this.#askRequest(question, opts);
    const metadata = this.#metadata(request.namespace?.toString());
    return new AskStream(this.stub.Ask(request, metadata, this.#callOptions(opts)));
  }

  /** The passages most relevant to `query`, best first: {passages, tookMs, metadataTrimmed}.
   * opts: topK, retrieval, namespace, timeoutMs. */
  async search(query, opts = {}) {
    const r = await this.#unary(
      'Search',
      { namespace: utf8(this.#ns(opts)), query: utf8(query), topK: opts.topK ?? 0, retrieval: retrieval(opts.retrieval) },
      opts,
    );
    return { passages: r.passages.map(passage), tookMs: r.tookMs, metadataTrimmed: r.metadataTrimmed };
  }

  /** A stored document: {id, namespace, text, passages, metadata, ingestTimeUnix,
   * validFromUnix, truncated}. Rejects with NotFound when the id is unknown. */
  async get(id, opts = {}) {
    const d = await this.#unary('Get', { namespace: utf8(this.#ns(opts)), id: utf8(id) }, opts);
    const passages = d.passages.map(passage);
    return {
      id: d.id,
      namespace: d.namespace,
      text: passages.map((p) => p.text).join(''),
      passages,
      metadata: { ...d.metadata },
      ingestTimeUnix: d.ingestTimeUnix,
      validFromUnix: d.validFromUnix,
      truncated: d.truncated,
    };
  }

  /** Removes documents: {forgotten, notFound, passages}. `ids` is one id or an array; opts:
   * namespace, timeoutMs. */
  async forget(ids, opts = {}) {
    const list = Array.isArray(ids) ? ids : [ids];
    const r = await this.#unary('Forget', { namespace: utf8(this.#ns(opts)), ids: list.map(utf8) }, opts);
    return { forgotten: r.forgotten, notFound: r.notFound, passages: r.passages };
  }

  // One CreateSession/AppendSession stream: a message per text, the first with `first`'s fields.
  #sessionStream(method, texts, first, opts) {
    const list = typeof texts === 'string' ? [texts] : [...texts];
    if (list.length === 0) {
      return Promise.reject(new InvalidArgument(3, 'a session needs at least one text'));
    }
    const namespace = this.#ns(opts);
    return new Promise((resolve, reject) => {
      const call = this.stub[method](this.#metadata(namespace), this.#callOptions(opts), (err, s) =>
        err ? reject(fromServiceError(err)) : resolve({ ...s }),
      );
      list.forEach((text, i) =>
        call.write(i === 0 ? { ...first, namespace: utf8(namespace), text: utf8(text) } : { text: utf8(text) }),
      );
      call.end();
    });
  }

  /** Absorbs `texts` (a string, or an array whose every text ends a chunk) into a new session:
   * resolves to {id, namespace, label, stateBytes, chunks, tokens, createdUnix, updatedUnix,
   * expiresUnix, mapperSha256}. opts: ttlSeconds (after the last write; 0: the daemon's
   * default), label, namespace, timeoutMs. */
  createSession(texts, opts = {}) {
    return this.#sessionStream(
      'CreateSession',
      texts,
      { ttlSeconds: opts.ttlSeconds ?? 0, label: utf8(opts.label ?? '') },
      opts,
    );
  }

  /** Absorbs more text into a session; resolves to the Session (the same stateBytes). opts:
   * ttlSeconds (0 keeps the session's), namespace, timeoutMs. */
  appendSession(sessionId, texts, opts = {}) {
    return this.#sessionStream(
      'AppendSession',
      texts,
      { sessionId: utf8(sessionId), ttlSeconds: opts.ttlSeconds ?? 0 },
      opts,
    );
  }

  /** Removes a session; rejects with NotFound when it is unknown or expired. */
  async deleteSession(sessionId, opts = {}) {
    await this.#unary('DeleteSession', { namespace: utf8(this.#ns(opts)), sessionId: utf8(sessionId) }, opts);
  }

  /** The namespace's live sessions, by id. */
  async listSessions(opts = {}) {
    const r = await this.#unary('ListSessions', { namespace: utf8(this.#ns(opts)) }, opts);
    return r.sessions.map((s) => ({ ...s }));
  }

  /** Counts and sizes of the bank: {documents, passages, namespaces, diskBytes, model, ...}.
   * opts.namespace: the namespace to count (absent: every namespace the token may read). */
  async stats(opts = {}) {
    const r = await this.#unary('Stats', { namespace: utf8(opts.namespace ?? '') }, opts);
    return { ...r, namespaces: r.namespaces.map((n) => ({ ...n })) };
  }
}
