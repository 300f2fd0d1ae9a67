"""Python client of the knowd daemon, over its gRPC API (proto/knowd/v1/knowd.proto).

    import knowd

    with knowd.Client("127.0.0.1:7070", token="s3cret", namespace="team-a") as client:
        for result in client.ingest([knowd.Doc("doc-1", "Etheth Rulhal lives in Ethdamith.")]):
            print(result.id, result.passages)
        answer = client.ask("In which city does Etheth Rulhal live?", mode="mac+rag")
        print(answer.text, [c.document_id for c in answer.citations])

Text goes in and comes out as `str`; errors are KnowdError subclasses carrying the gRPC code.
AsyncClient (knowd.aio) offers the same calls for asyncio.
"""
import pkgutil

# The generated stubs (knowd.v1) may live in another directory named knowd on sys.path (the
# build directory, when run from a source checkout): let the package span both.
__path__ = pkgutil.extend_path(__path__, __name__)

from knowd.errors import (  # noqa: E402
    DeadlineExceeded,
    InvalidArgument,
    KnowdError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from knowd.types import (  # noqa: E402
    Answer,
    Doc,
    Document,
    ForgetResult,
    IngestResult,
    NamespaceStats,
    Passage,
    SearchResult,
    Session,
    Stats,
    Timings,
)
from knowd.client import AskStream, Client  # noqa: E402
from knowd.aio import AsyncAskStream, AsyncClient  # noqa: E402

__all__ = [
    "Answer", "AskStream", "AsyncAskStream", "AsyncClient", "Client", "DeadlineExceeded", "Doc",
    "Document", "ForgetResult", "IngestResult", "InvalidArgument", "KnowdError",
    "NamespaceStats", "NotFound", "Passage", "PermissionDenied", "ResourceExhausted",
    "SearchResult", "Session", "Stats", "Timings", "Unauthenticated", "Unavailable",
]
