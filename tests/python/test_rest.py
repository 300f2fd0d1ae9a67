"""The REST/JSON knowledge API (daemon/rest_api.h, docs/http-api.md) of the real daemon: round
trips, NDJSON ingest with per-document results, and the error shapes with their HTTP statuses."""
import time
import urllib.parse

from conftest import (ADMIN, MAX_MESSAGE_BYTES, READER, WRITER, expect_error, http,
                      world_passages)

NDJSON = "application/x-ndjson"


def stats(daemon, name_space, token=ADMIN):
    r = http(daemon.http, "GET", f"/v1/namespaces/{name_space}/stats", token=token)
    assert r.status == 200, r.body
    return r.json


def test_ingest_get_search_delete_round_trip(daemon):
    text = "Zoë Kraków lives in Tōkyō-Ville. Zoë Kraków works as a glassblower."
    doc = {"id": "doc-1", "text": text, "metadata": {"source": "rest test", "lang": "en"},
           "validFromUnix": 1700000000}
    before = int(time.time())
    r = http(daemon.http, "POST", "/v1/namespaces/rest/documents", doc, token=ADMIN)
    assert r.status == 200, r.body
    assert r.json == {"id": "doc-1", "position": 0, "passages": 1, "replaced": False}
    assert stats(daemon, "rest")["documents"] == 1

    r = http(daemon.http, "GET", "/v1/namespaces/rest/documents/doc-1", token=ADMIN)
    assert r.status == 200, r.body
    got = r.json
    assert got["id"] == "doc-1" and got["namespace"] == "rest"
    assert "".join(p["text"] for p in got["passages"]) == text  # plain UTF-8, not base64
    assert got["metadata"] == {"source": "rest test", "lang": "en"}
    assert got["validFromUnix"] == 1700000000
    assert before - 1 <= got["ingestTimeUnix"] <= int(time.time()) + 1
    assert got["truncated"] is False
    assert [p["documentId"] for p in got["passages"]] == ["doc-1"]

    r = http(daemon.http, "POST", "/v1/namespaces/rest/search",
             {"query": "Where does Zoë Kraków live?", "topK": 1, "retrieval": "lexical"},
             token=ADMIN)
    assert r.status == 200, r.body
    [hit] = r.json["passages"]
    assert hit["documentId"] == "doc-1" and hit["index"] == 0 and hit["text"] == text
    assert hit["score"] > 0
    assert hit["metadata"] == {"source": "rest test", "lang": "en"}
    assert r.json["metadataTrimmed"] is False and r.json["tookMs"] >= 0

    # The same id again replaces the document.
    r = http(daemon.http, "POST", "/v1/namespaces/rest/documents", doc, token=ADMIN)
    assert r.status == 200 and r.json["replaced"] is True, r.body

    r = http(daemon.http, "DELETE", "/v1/namespaces/rest/documents/doc-1", token=ADMIN)
    assert r.status == 200, r.body
    assert r.json == {"forgotten": ["doc-1"], "notFound": [], "passages": 1, "logSequence": 0}
    msg = expect_error(http(daemon.http, "GET", "/v1/namespaces/rest/documents/doc-1",
                            token=ADMIN), 404, "NOT_FOUND")
    assert 'no document "doc-1" in namespace "rest"' in msg
    expect_error(http(daemon.http, "DELETE", "/v1/namespaces/rest/documents/doc-1", token=ADMIN),
                 404, "NOT_FOUND")
    r = http(daemon.http, "POST", "/v1/namespaces/rest/search", {"query": "Zoë Kraków"},
             token=ADMIN)
    assert r.status == 200 and r.json["passages"] == [], r.body
    assert stats(daemon, "rest")["namespaces"] == []


def test_ids_with_slashes_and_spaces(daemon):
    doc_id = "guides/set up.md"
    r = http(daemon.http, "POST", "/v1/namespaces/rest-ids/documents",
             {"id": doc_id, "text": "Omicron Quorin lives in Lorvale."}, token=ADMIN)
    assert r.status == 200 and r.json["id"] == doc_id, r.body
    for path in ("/v1/namespaces/rest-ids/documents/" + urllib.parse.quote(doc_id, safe=""),
                 "/v1/namespaces/rest-ids/documents/guides/set%20up.md"):
        r = http(daemon.http, "GET", path, token=ADMIN)
        assert r.status == 200 and r.json["id"] == doc_id, (path, r.body)
    r = http(daemon.http, "DELETE",
             "/v1/namespaces/rest-ids/documents/" + urllib.parse.quote(doc_id, safe=""),
             token=ADMIN)
    assert r.status == 200 and r.json["forgotten"] == [doc_id], r.body


def test_ndjson_bad_document_gets_its_own_line(daemon):
    lines = [
        '{"id": "nd-a", "text": "Alpha Quorin keeps bees in Lorvale."}',
        '{"id": "nd-b", "text": "not closed',                          # not JSON
        '',                                                            # blank: skipped
        '{"id": "nd-c", "text": "Beta Quorin keeps goats in Lorvale."}',
        '{"id": "nd-d", "text": ""}',                                  # refused by the daemon
        '{"id": "nd-e", "text": "x", "colour": "red"}',                # unknown field
        '{"id": "nd-f", "text": "Gamma Quorin keeps owls in Lorvale.", "metadata": {"n": "6"}}',
    ]
    r = http(daemon.http, "POST", "/v1/namespaces/ndjson/documents", "\n".join(lines) + "\n",
             token=ADMIN, content_type=NDJSON)
    assert r.status == 200, r.body
    assert r.headers["Content-Type"].startswith(NDJSON)
    results = r.lines()
    assert [x["id"] for x in results] == ["nd-a", "", "nd-c", "nd-d", "nd-e", "nd-f"]
    assert [x["position"] for x in results] == [0, 1, 2, 3, 4, 5]
    assert [x["line"] for x in results] == [1, 2, 4, 5, 6, 7]
    for ok in (results[0], results[2], results[5]):
        assert ok["passages"] == 1 and ok["replaced"] is False and "error" not in ok, ok
    for bad in (results[1], results[3], results[4]):
        assert bad["error"]["code"] == 400 and bad["error"]["status"] == "INVALID_ARGUMENT", bad
        assert "passages" not in bad
    assert "not valid JSON" in results[1]["error"]["message"]
    assert "text" in results[3]["error"]["message"]
    assert 'unknown field "colour"' in results[4]["error"]["message"]

    for stored in ("nd-a", "nd-c", "nd-f"):
        assert http(daemon.http, "GET", f"/v1/namespaces/ndjson/documents/{stored}",
                    token=ADMIN).status == 200
    for refused in ("nd-d", "nd-e"):
        expect_error(http(daemon.http, "GET", f"/v1/namespaces/ndjson/documents/{refused}",
                          token=ADMIN), 404, "NOT_FOUND")
    assert stats(daemon, "ndjson")["documents"] == 3

    # Many documents at once: the world fixture, one result per document, all stored.
    passages = world_passages()
    body = "".join(__import__("json").dumps(p) + "\n" for p in passages)
    r = http(daemon.http, "POST", "/v1/namespaces/world-rest/documents", body, token=ADMIN,
             content_type=NDJSON)
    assert r.status == 200, r.body
    results = r.lines()
    assert [x["id"] for x in results] == [p["id"] for p in passages]
    assert all(x["passages"] >= 1 and "error" not in x for x in results), r.body
    assert stats(daemon, "world-rest")["documents"] == len(passages)

    # Several ids forgotten at once; unknown ones reported.
    r = http(daemon.http, "POST", "/v1/namespaces/ndjson/forget", {"ids": ["nd-a", "nd-zzz"]},
             token=ADMIN)
    assert r.status == 200, r.body
    assert r.json == {"forgotten": ["nd-a"], "notFound": ["nd-zzz"], "passages": 1,
                      "logSequence": 0}


def test_error_shapes(daemon):
    doc = {"id": "e-1", "text": "Delta Quorin sails from Port Ember."}
    # 401: no token, an unknown one, one that is not printable ASCII.
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/documents", doc), 401,
                 "UNAUTHENTICATED")
    expect_error(http(daemon.http, "GET", "/v1/stats", token="wrong"), 401, "UNAUTHENTICATED")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search", {"query": "x"},
                      token="wrong"), 401, "UNAUTHENTICATED")
    # 403: a reader writing, a token outside its namespace.
    msg = expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/documents", doc,
                            token=READER), 403, "PERMISSION_DENIED")
    assert "write" in msg
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-b/search", {"query": "x"},
                      token=WRITER), 403, "PERMISSION_DENIED")
    expect_error(http(daemon.http, "DELETE", "/v1/namespaces/team-a/documents/e-1",
                      token=READER), 403, "PERMISSION_DENIED")
    # NDJSON refused per document: the reader's lines each carry the 403.
    r = http(daemon.http, "POST", "/v1/namespaces/team-a/documents",
             '{"id": "e-2", "text": "t"}\n{"id": "e-3", "text": "t"}\n', token=READER,
             content_type=NDJSON)
    assert r.status == 200, r.body
    assert [x["error"]["code"] for x in r.lines()] == [403, 403]
    # 413: a body over --max-message-bytes.
    big = {"id": "e-big", "text": "a" * (MAX_MESSAGE_BYTES + 1)}
    msg = expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/documents", big,
                            token=WRITER), 413, "RESOURCE_EXHAUSTED")
    assert "max-message-bytes" in msg
    # 400: not JSON, a wrong type, a namespace the path contradicts, an empty query.
    msg = expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search", "{query",
                            token=READER), 400, "INVALID_ARGUMENT")
    assert "not valid JSON" in msg
    msg = expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search",
                            {"query": "x", "topK": "three"}, token=READER), 400,
                       "INVALID_ARGUMENT")
    assert msg == "topK: must be an integer"
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search",
                      {"query": "x", "namespace": "team-b"}, token=READER), 400,
                 "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search", {"query": ""},
                      token=READER), 400, "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/ask",
                      {"question": "x", "mode": "psychic"}, token=READER), 400,
                 "INVALID_ARGUMENT")
    # 404: an unknown endpoint; memory asked in a namespace that holds nothing.
    expect_error(http(daemon.http, "GET", "/v1/namespaces/team-a/nothing", token=READER), 404,
                 "NOT_FOUND")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/ask",
                      {"question": "Who?", "mode": "rag"}, token=READER), 404, "NOT_FOUND")
    # Malformed input of every kind is a 400 (or 401), never a crash.
    msg = expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search",
                            b'{"query": "\xff\xfe"}', token=READER), 400, "INVALID_ARGUMENT")
    assert "UTF-8" in msg
    expect_error(http(daemon.http, "GET", "/v1/namespaces/team-a/documents/%FF%FE", token=READER),
                 400, "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search",
                      '{"query": "x", "topK": 99999999999999999999999}', token=READER), 400,
                 "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search", "[" * 100000,
                      token=READER), 400, "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/documents",
                      {"id": "m", "text": "t", "metadata": {"k": 5}}, token=WRITER), 400,
                 "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "POST", "/v1/namespaces/team-a/search", [1, 2], token=READER),
                 400, "INVALID_ARGUMENT")
    expect_error(http(daemon.http, "GET", "/v1/stats", token="t\u00f6ken"), 401,
                 "UNAUTHENTICATED")
    # The daemon still serves after all of that, and nothing was stored in team-a.
    r = http(daemon.http, "GET", "/v1/stats?namespace=team-a", token=READER)
    assert r.status == 200 and r.json["documents"] == 0, r.body
    assert http(daemon.http, "GET", "/readyz").status == 200


def test_stats_counts_only_granted_namespaces(daemon):
    r = http(daemon.http, "POST", "/v1/namespaces/team-a/documents",
             {"id": "s-1", "text": "Epsilon Quorin paints in Lorvale."}, token=WRITER)
    assert r.status == 200, r.body
    r = http(daemon.http, "GET", "/v1/stats", token=READER)
    assert r.status == 200, r.body
    assert [n["name"] for n in r.json["namespaces"]] == ["team-a"]
    assert r.json["documents"] == r.json["namespaces"][0]["documents"] >= 1
    assert r.json["model"].endswith("knowd-tiny") and r.json["bytesPerModulation"] > 0
    r = http(daemon.http, "GET", "/v1/stats", token=ADMIN)
    assert "team-a" in [n["name"] for n in r.json["namespaces"]]
    assert r.status == 200 and r.json["documents"] >= 1
    r = http(daemon.http, "DELETE", "/v1/namespaces/team-a/documents/s-1", token=WRITER)
    assert r.status == 200, r.body
