// Types of @knowd/client (src/index.js).

export type Mode = 'closed-book' | 'mac' | 'rag' | 'mac+rag';
export type Retrieval = 'dense' | 'lexical' | 'hybrid';

export interface ClientOptions {
  /** "HOST:PORT" of the daemon's gRPC port (default 127.0.0.1:7070). */
  target?: string;
  /** Bearer token, sent as "authorization: Bearer <token>". */
  token?: string | null;
  /** Namespace of every call unless a call names one ("" = "default"). */
  namespace?: string;
  /** Each call's deadline in milliseconds (0 = none). */
  timeoutMs?: number;
  tls?: boolean;
  rootCerts?: Buffer | string | null;
  privateKey?: Buffer | string | null;
  certChain?: Buffer | string | null;
  serverName?: string | null;
  protoPath?: string;
  maxMessageBytes?: number;
}

export interface CallOptions {
  namespace?: string;
  timeoutMs?: number;
}

export interface AskOptions extends CallOptions {
  mode?: Mode;
  topK?: number;
  ragPassages?: number;
  retrieval?: Retrieval;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  seed?: number;
  explain?: boolean;
  /** A session whose update the answer is generated under (alone, without a mode: by itself). */
  sessionId?: string;
}

export interface SessionOptions extends CallOptions {
  /** Seconds the session lives after its last write (0: the daemon's default, or on append the
   * session's own). */
  ttlSeconds?: number;
  /** createSession only. */
  label?: string;
}

export interface Session {
  id: string;
  namespace: string;
  label: string;
  /** The stored state's bytes: the same whatever the context's length. */
  stateBytes: number;
  chunks: number;
  tokens: number;
  createdUnix: number;
  updatedUnix: number;
  /** 0: never. */
  expiresUnix: number;
  mapperSha256: string;
}

export interface SearchOptions extends CallOptions {
  topK?: number;
  retrieval?: Retrieval;
}

export interface Doc {
  id: string;
  text: string;
  metadata?: Record<string, string>;
  validFromUnix?: number;
}

export interface Passage {
  documentId: string;
  index: number;
  text: string;
  score: number;
  metadata: Record<string, string>;
  ingestTimeUnix: number;
  validFromUnix: number;
}

export interface IngestResult {
  id: string;
  position: number;
  passages: number;
  replaced: boolean;
  ok: boolean;
  error: KnowdError | null;
}

export interface Timings {
  queueMs: number;
  retrievalMs: number;
  modulationMs: number;
  prefillMs: number;
  decodeMs: number;
  totalMs: number;
  promptTokens: number;
  generatedTokens: number;
}

export interface Answer {
  text: string;
  mode: Mode;
  citations: Passage[];
  stopReason: string;
  nothingInMemory: boolean;
  relevance: number;
  metadataTrimmed: boolean;
  timings: Timings | null;
  explain: { promptIds: number[]; prompt: string; prefixRows: number; prefixSha256: string } | null;
  /** The session the answer was generated under ("" when none). */
  sessionId: string;
}

export interface SearchResult {
  passages: Passage[];
  tookMs: number;
  metadataTrimmed: boolean;
}

export interface Document {
  id: string;
  namespace: string;
  text: string;
  passages: Passage[];
  metadata: Record<string, string>;
  ingestTimeUnix: number;
  validFromUnix: number;
  truncated: boolean;
}

export interface ForgetResult {
  forgotten: string[];
  notFound: string[];
  passages: number;
}

export interface Stats {
  documents: number;
  passages: number;
  namespaces: {
    name: string;
    documents: number;
    passages: number;
    sessions: number;
    sessionBytes: number;
  }[];
  diskBytes: number;
  modulationBytes: number;
  bytesPerModulation: number;
  model: string;
  adapter: string;
  fingerprint: string;
  version: string;
  uptimeSeconds: number;
  kvBytesPerMedianPassage: number;
  recoveryWarning: string;
  /** Live sessions and the bytes of their stored states, summed over `namespaces`. */
  sessions: number;
  sessionBytes: number;
}

export class KnowdError extends Error {
  /** The gRPC status code (grpc.status). */
  code: number;
  codeName: string;
  /** The HTTP status knowd's HTTP APIs answer the same code with (401, 403, 404, ...). */
  status: number;
  /** The daemon's explanation. */
  details: string;
}
export class InvalidArgument extends KnowdError {}
export class NotFound extends KnowdError {}
export class Unauthenticated extends KnowdError {}
export class PermissionDenied extends KnowdError {}
export class ResourceExhausted extends KnowdError {}
export class Unavailable extends KnowdError {}
export class DeadlineExceeded extends KnowdError {}
export function errorOf(code: number, message: string): KnowdError;

export class AskStream implements AsyncIterable<string> {
  /** The final Answer, once the iteration has ended. */
  answer: Answer | null;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  finish(): Promise<Answer>;
  cancel(): void;
}

export class KnowdClient {
  constructor(options?: ClientOptions);
  namespace: string;
  close(): void;
  ingest(
    docs: Iterable<Doc | [string, string]> | AsyncIterable<Doc | [string, string]>,
    opts?: CallOptions,
  ): AsyncGenerator<IngestResult>;
  ingestOne(doc: Doc | [string, string], opts?: CallOptions): Promise<IngestResult>;
  ask(question: string, opts?: AskOptions): Promise<Answer>;
  askStream(question: string, opts?: AskOptions): AskStream;
  search(query: string, opts?: SearchOptions): Promise<SearchResult>;
  get(id: string, opts?: CallOptions): Promise<Document>;
  forget(ids: string | string[], opts?: CallOptions): Promise<ForgetResult>;
  stats(opts?: CallOptions): Promise<Stats>;
  createSession(texts: string | string[], opts?: SessionOptions): Promise<Session>;
  appendSession(sessionId: string, texts: string | string[], opts?: SessionOptions): Promise<Session>;
  deleteSession(sessionId: string, opts?: CallOptions): Promise<void>;
  listSessions(opts?: CallOptions): Promise<Session[]>;
}
