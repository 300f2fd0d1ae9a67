"""What the calls take and return: plain dataclasses with `str` text."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from knowd.errors import KnowdError


@dataclass
class Doc:
    """A document to ingest: an id unique in its namespace, its text and optional metadata.
    `valid_from_unix`: the second from which its facts hold (0: its ingest time)."""

    id: str
    text: str
    metadata: Dict[str, str] = field(default_factory=dict)
    valid_from_unix: int = 0


@dataclass
class IngestResult:
    """One document's ack. `error` is None when it is stored: its passages are then in the
    daemon's synced write-ahead log and searchable."""

    id: str
    position: int
    passages: int = 0
    replaced: bool = False
    error: Optional[KnowdError] = None

    @property
    def ok(self):
        return self.error is None


@dataclass
class Passage:
    """A passage cited by an answer or found by a search: its document, its index in it, its text
    and its retrieval score (cosine for dense retrieval, BM25 for lexical, RRF for hybrid)."""

    document_id: str
    index: int
    text: str
    score: float = 0.0
    metadata: Dict[str, str] = field(default_factory=dict)
    ingest_time_unix: int = 0
    valid_from_unix: int = 0


@dataclass
class Timings:
    queue_ms: float = 0.0
    retrieval_ms: float = 0.0
    modulation_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0


@dataclass
class Answer:
    """An answer: its text, the mode that answered ("closed-book", "mac", "rag", "mac+rag"), the
    passages it drew on, best first, and whether the memory held nothing on the question (then
    `text` and `citations` are empty)."""

    text: str
    mode: str
    citations: List[Passage]
    stop_reason: str
    nothing_in_memory: bool
    relevance: float
    timings: Timings
    metadata_trimmed: bool = False
    prompt: Optional[str] = None  # what the model read, when asked with explain=True
    session_id: str = ""  # the session whose update the answer was generated under


@dataclass
class SearchResult:
    passages: List[Passage]
    took_ms: float
    metadata_trimmed: bool = False


@dataclass
class Document:
    """A stored document: its passages in order (their texts joined are its text)."""

    id: str
    namespace: str
    passages: List[Passage]
    metadata: Dict[str, str]
    ingest_time_unix: int
    valid_from_unix: int
    truncated: bool = False

    @property
    def text(self):
        return "".join(p.text for p in self.passages)


@dataclass
class ForgetResult:
    forgotten: List[str]
    not_found: List[str]
    passages: int


@dataclass
class NamespaceStats:
    name: str
    documents: int
    passages: int
    sessions: int = 0
    session_bytes: int = 0


@dataclass
class Stats:
    documents: int
    passages: int
    namespaces: List[NamespaceStats]
    disk_bytes: int
    modulation_bytes: int
    bytes_per_modulation: int
    model: str
    adapter: str
    fingerprint: str
    version: str
    uptime_seconds: float
    kv_bytes_per_median_passage: int
    recovery_warning: str = ""
    sessions: int = 0
    session_bytes: int = 0


@dataclass
class Session:
    """A session: a context absorbed into a constant-size state (state_bytes, whatever its
    length) that the model applies under questions asked with its id. expires_unix 0: never."""

    id: str
    namespace: str
    label: str
    state_bytes: int
    chunks: int
    tokens: int
    created_unix: int
    updated_unix: int
    expires_unix: int
    mapper_sha256: str
