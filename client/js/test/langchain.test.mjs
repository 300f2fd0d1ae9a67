// LangChain.js against the real daemon: KnowdRetriever (@knowd/client/langchain, a BaseRetriever
// of @langchain/core over knowd's Search) returns the ingested passage for its question as a
// Document with its ids and score; @langchain/openai's ChatOpenAI, pointed at knowd's
// OpenAI-compatible endpoint, answers (invoked and streamed) with gRPC Ask's answer; and both run
// together in one LangChain chain.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { Document } from '@langchain/core/documents';
import { StringOutputParser } from '@langchain/core/output_parsers';
import { RunnableMap } from '@langchain/core/runnables';
import { ChatOpenAI } from '@langchain/openai';

import { KnowdClient } from '@knowd/client';
import { KnowdRetriever } from '@knowd/client/langchain';

import { Daemon, READER, WRITER, worldPassages, worldQuestions } from './support/daemon.mjs';

const passages = worldPassages();
const questions = worldQuestions().filter((q) => q.oracle_correct).slice(0, 6);
let daemon;
let client;

const chat = (model = 'knowd-tiny:rag') =>
  new ChatOpenAI({
    model,
    apiKey: READER,
    configuration: { baseURL: `http://${daemon.http}/v1` },
    maxRetries: 0,
    modelKwargs: { knowd: { namespace: 'team-a' } },
  });

before(async () => {
  daemon = await Daemon.start();
  client = new KnowdClient({ target: daemon.grpc, token: WRITER, namespace: 'team-a', timeoutMs: 120000 });
  for await (const r of client.ingest(passages)) assert.ok(r.ok, `${r.id}: ${r.error}`);
});

after(async () => {
  client?.close();
  await daemon?.stop();
});

test('the retriever returns the ingested passage for its question, as Documents', async () => {
  const retriever = new KnowdRetriever({
    target: daemon.grpc, token: READER, namespace: 'team-a', topK: 3, retrieval: 'lexical',
  });
  try {
    for (const q of questions) {
      const docs = await retriever.invoke(q.question);
      assert.equal(docs.length, 3);
      assert.ok(docs[0] instanceof Document);
      const expected = passages.find((p) => p.id === q.passage_id);
      assert.equal(docs[0].metadata.documentId, q.passage_id, q.question);
      assert.equal(docs[0].pageContent, expected.text);
      assert.equal(docs[0].metadata.passageId, `${q.passage_id}#0`);
      assert.equal(docs[0].metadata.index, 0);
      assert.equal(docs[0].metadata.subject, expected.metadata.subject);
      assert.equal(docs[0].metadata.namespace, 'team-a');
      assert.ok(docs[0].metadata.score >= docs[1].metadata.score);
      // The scores are knowd's Search scores.
      const search = await client.search(q.question, { topK: 3, retrieval: 'lexical' });
      assert.deepEqual(
        docs.map((d) => [d.metadata.documentId, d.metadata.score]),
        search.passages.map((p) => [p.documentId, p.score]),
      );
    }
  } finally {
    retriever.client.close();
  }
});

test('ChatOpenAI pointed at knowd answers with gRPC Ask’s answer, invoked and streamed', async () => {
  for (const q of questions.slice(0, 3)) {
    const expected = await client.ask(q.question, { mode: 'rag' });
    const message = await chat().invoke(q.question);
    assert.equal(message.content, expected.text);
    assert.equal(message.content, q.answer);
    assert.ok(message.usage_metadata.output_tokens > 0);
    let streamed = '';
    for await (const chunk of await chat().stream([['user', q.question]])) streamed += chunk.content;
    assert.equal(streamed, expected.text);
  }
  const closedBook = await client.ask(questions[0].question, { mode: 'closed-book' });
  assert.equal((await chat('knowd-tiny:closed-book').invoke(questions[0].question)).content, closedBook.text);
});

test('the retriever and ChatOpenAI in one chain', async () => {
  const retriever = new KnowdRetriever({ client, namespace: 'team-a', topK: 2 });
  const chain = RunnableMap.from({
    sources: retriever,
    answer: chat('knowd-tiny:mac+rag').pipe(new StringOutputParser()),
  });
  const q = questions[1];
  const out = await chain.invoke(q.question);
  const expected = await client.ask(q.question, { mode: 'mac+rag' });
  assert.equal(out.answer, expected.text);
  assert.equal(out.sources[0].metadata.documentId, q.passage_id);
  assert.equal(expected.citations[0].documentId, q.passage_id);
  assert.equal(out.sources[0].pageContent, expected.citations[0].text);
});
