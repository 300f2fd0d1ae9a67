// @knowd/client (src/index.js) against the real daemon over gRPC: the world fixture streamed in
// over one Ingest stream, ask (streamed and not; the same answer as the REST API's), search, get,
// forget, stats, and typed errors (401 for a bad token from the tokens file, 403 for a role or
// namespace the token lacks, 404 for an unknown id, 400 for an empty document).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  InvalidArgument,
  KnowdClient,
  KnowdError,
  NotFound,
  PermissionDenied,
  Unauthenticated,
} from '@knowd/client';

import { ADMIN, Daemon, READER, WRITER, worldPassages, worldQuestions } from './support/daemon.mjs';

const passages = worldPassages();
const question = worldQuestions().find((q) => q.oracle_correct && q.passage_id === 'test-p0');
let daemon;
const clients = [];
const client = (token, namespace = 'team-a') => {
  const c = new KnowdClient({ target: daemon.grpc, token, namespace, timeoutMs: 120000 });
  clients.push(c);
  return c;
};

before(async () => {
  daemon = await Daemon.start();
});

after(async () => {
  for (const c of clients) c.close();
  await daemon?.stop();
});

test('ingest streams many documents with one result each, in order', async () => {
  // An async generator as the source, with one empty (refused) document in the middle.
  async function* docs() {
    for (const [i, p] of passages.entries()) {
      yield { id: p.id, text: p.text, metadata: p.metadata };
      if (i === 4) yield { id: 'empty-doc', text: '' };
    }
  }
  const results = [];
  for await (const r of client(WRITER).ingest(docs())) results.push(r);
  assert.equal(results.length, passages.length + 1);
  results.forEach((r, i) => assert.equal(r.position, i));
  const refused = results[5];
  assert.equal(refused.id, 'empty-doc');
  assert.equal(refused.ok, false);
  assert.ok(refused.error instanceof InvalidArgument);
  assert.equal(refused.error.code, 3);
  assert.equal(refused.error.status, 400);
  const stored = results.filter((r) => r.ok);
  assert.deepEqual(stored.map((r) => r.id), passages.map((p) => p.id));
  for (const r of stored) {
    assert.ok(r.passages >= 1, `${r.id}: ${r.passages} passages`);
    assert.equal(r.replaced, false);
  }
  // Ingesting an id again replaces it.
  const again = await client(WRITER).ingestOne([passages[1].id, passages[1].text]);
  assert.equal(again.replaced, true);
  await client(WRITER).ingestOne({ ...passages[1] });
});

test('ask answers with citations; the stream concatenates to the same answer as REST', async () => {
  for (const mode of ['closed-book', 'rag', 'mac', 'mac+rag']) {
    const answer = await client(READER).ask(question.question, { mode });
    assert.equal(answer.mode, mode);
    assert.ok(answer.text.length > 0, `${mode}: empty answer`);
    const rest = await daemon.rest(
      'POST', '/v1/namespaces/team-a/ask', { question: question.question, mode }, READER,
    );
    assert.equal(rest.status, 200, JSON.stringify(rest.json));
    assert.equal(answer.text, rest.json.answer, mode);
    assert.deepEqual(
      answer.citations.map((c) => [c.documentId, c.index, c.text]),
      rest.json.cited.map((c) => [c.documentId, c.index, c.text]),
    );
    if (mode === 'closed-book') {
      assert.equal(answer.citations.length, 0);
    } else {
      assert.equal(answer.citations[0].documentId, 'test-p0', mode);
    }
    const stream = client(READER).askStream(question.question, { mode });
    const pieces = [];
    for await (const piece of stream) pieces.push(piece);
    assert.ok(pieces.length >= 1);
    assert.equal(pieces.join(''), answer.text);
    assert.equal(stream.answer.text, answer.text);
    assert.deepEqual(stream.answer.citations, answer.citations);
  }
  // With memory, the fixture's oracle question is answered right.
  const rag = await client(READER).ask(question.question, { mode: 'rag' });
  assert.equal(rag.text, question.answer);
});

test('search, get, forget and stats', async () => {
  const query = { query: question.question, topK: 3, retrieval: 'lexical' };
  const hits = await client(READER).search(query.query, query);
  assert.equal(hits.passages.length, 3);
  assert.equal(hits.passages[0].documentId, 'test-p0');
  assert.equal(hits.passages[0].text, passages[0].text);
  assert.deepEqual(hits.passages[0].metadata, passages[0].metadata);
  assert.ok(hits.passages[0].score > hits.passages[2].score);
  const rest = await daemon.rest('POST', '/v1/namespaces/team-a/search', query);
  assert.deepEqual(
    hits.passages.map((p) => [p.documentId, p.index, Math.fround(p.score)]),
    rest.json.passages.map((p) => [p.documentId, p.index, Math.fround(p.score)]),
  );

  const doc = await client(READER).get('test-p3');
  assert.equal(doc.id, 'test-p3');
  assert.equal(doc.namespace, 'team-a');
  assert.equal(doc.text, passages[3].text);
  assert.deepEqual(doc.metadata, passages[3].metadata);
  assert.ok(doc.ingestTimeUnix > 1.7e9);

  const before = await client(READER).stats({ namespace: 'team-a' });
  assert.equal(before.documents, passages.length);
  assert.ok(before.passages >= passages.length);
  assert.equal(before.namespaces[0].name, 'team-a');
  assert.ok(before.bytesPerModulation > 0);

  const forgotten = await client(WRITER).forget(['test-p3', 'no-such-doc']);
  assert.deepEqual(forgotten.forgotten, ['test-p3']);
  assert.deepEqual(forgotten.notFound, ['no-such-doc']);
  assert.equal(forgotten.passages, doc.passages.length);
  await assert.rejects(client(READER).get('test-p3'), (e) => {
    assert.ok(e instanceof NotFound && e instanceof KnowdError);
    assert.equal(e.code, 5);
    assert.equal(e.codeName, 'NOT_FOUND');
    assert.equal(e.status, 404);
    assert.match(e.details, /test-p3/);
    return true;
  });
  const afterForget = await client(READER).stats({ namespace: 'team-a' });
  assert.equal(afterForget.documents, passages.length - 1);
});

test('typed errors: a bad token is 401, a role or namespace the token lacks 403', async () => {
  await assert.rejects(client('not-a-token').search('Etheth Rulhal'), (e) => {
    assert.ok(e instanceof Unauthenticated, e.name);
    assert.equal(e.code, 16);
    assert.equal(e.status, 401);
    return true;
  });
  await assert.rejects(client(null).stats(), (e) => e instanceof Unauthenticated && e.status === 401);
  // The reader may not write, nor read another namespace.
  await assert.rejects(client(READER).ingestOne(['x', 'Zorbo lives in Quux.']), (e) => {
    assert.ok(e instanceof PermissionDenied, e.name);
    assert.equal(e.code, 7);
    assert.equal(e.status, 403);
    return true;
  });
  await assert.rejects(
    client(READER, 'default').ask(question.question, { mode: 'rag' }),
    (e) => e instanceof PermissionDenied && e.status === 403,
  );
  // A whole Ingest stream refused by the token rejects its iteration.
  await assert.rejects(async () => {
    for await (const r of client('not-a-token').ingest([['a', 'b']])) assert.fail(`acked ${r.id}`);
  }, Unauthenticated);
  // Memory asked in a namespace that holds nothing: 404.
  await assert.rejects(
    client(ADMIN, 'empty-ns').ask(question.question, { mode: 'mac' }),
    (e) => e instanceof NotFound && e.status === 404,
  );
  assert.throws(() => client(READER).askStream('q', { mode: 'oracle' }), InvalidArgument);
});
