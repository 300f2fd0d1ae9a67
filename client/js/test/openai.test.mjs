// The official `openai` npm client, unmodified, against knowd's OpenAI-compatible HTTP API
// (docs/operations.md, "OpenAI-compatible API"): the real `knowd serve` on loopback with a tokens
// file, the world fixture ingested with knowctl (gRPC), then chat completions streamed and not,
// completions and the models list through the client; the answers and citations must be the
// ones `knowctl ask --json` (gRPC's Ask) gives; a session created through REST and named in the
// request's `knowd` object answers as `knowctl session ask --json` does; a bad token must be 401,
// a namespace the token lacks 403, an unknown model or session 404, as the client's typed errors.
//
// Run by ctest (tests/js) with KNOWD_BINARY, KNOWCTL_BINARY, KNOWD_MODEL and KNOWD_WORLD set;
// `npm ci` in client/js installs the client (scripts/install-deps does).
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';

import OpenAI from 'openai';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (ctest sets it: tests/js/CMakeLists.txt)`);
  return value;
};
const knowd = env('KNOWD_BINARY');
const knowctl = env('KNOWCTL_BINARY');
const model = env('KNOWD_MODEL');
const world = env('KNOWD_WORLD');

const ADMIN = 'admin-token';
const READER = 'team-a-reader';
const questions = fs
  .readFileSync(path.join(world, 'questions.jsonl'), 'utf8')
  .split('\n')
  .filter((line) => line.trim())
  .map((line) => JSON.parse(line))
  .filter((q) => q.oracle_correct)
  .slice(0, 2)
  .map((q) => q.question);

let dir;
let daemon;
let grpc;
let http;

// Starts `knowd serve` on free loopback ports; resolves once it prints where it listens.
function startDaemon(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(knowd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let log = '';
    child.stderr.on('data', (d) => (log += d));
    const timer = setTimeout(() => reject(new Error(`knowd did not start:\n${log}`)), 120000);
    child.on('exit', (code) => reject(new Error(`knowd exited ${code}:\n${log}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/^knowd: listening on (\S+) \(grpc\), (\S+) \(http\)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, grpc: m[1], http: m[2] });
      }
    });
  });
}

function knowctlRun(token, args) {
  return execFileSync(knowctl, ['--server', grpc, '--token', token, ...args], {
    encoding: 'utf8',
    timeout: 120000,
  });
}

// gRPC's answer: `knowctl ask --json`.
function grpcAsk(question, mode) {
  return JSON.parse(
    knowctlRun(READER, ['--namespace', 'team-a', 'ask', question, '--mode', mode, '--json']),
  );
}

function client(token) {
  return new OpenAI({ apiKey: token, baseURL: `http://${http}/v1`, maxRetries: 0, timeout: 120000 });
}

function assertSameCitations(knowdExtras, final) {
  const cited = final.cited ?? [];
  assert.equal(knowdExtras.citations.length, cited.length);
  knowdExtras.citations.forEach((c, i) => {
    assert.equal(c.document_id, cited[i].document_id);
    assert.equal(c.index, cited[i].index ?? 0);
    assert.equal(c.text, cited[i].text);
    assert.equal(Math.fround(c.score), Math.fround(cited[i].score ?? 0));
  });
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowd-openai-js-'));
  const tokens = path.join(dir, 'tokens.json');
  fs.writeFileSync(
    tokens,
    JSON.stringify([
      { token: ADMIN, namespaces: ['*'], roles: ['admin'] },
      { token: READER, namespaces: ['team-a'], roles: ['read'] },
    ]),
  );
  ({ child: daemon, grpc, http } = await startDaemon([
    'serve', '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0', '--model', model,
    '--data-dir', path.join(dir, 'data'), '--tokens-file', tokens,
  ]));
  for (const ns of ['team-a', 'default']) {
    knowctlRun(ADMIN, ['--namespace', ns, 'ingest', path.join(world, 'passages.jsonl')]);
  }
});

after(async () => {
  if (daemon && daemon.exitCode === null) {
    daemon.removeAllListeners('exit');
    const exited = new Promise((resolve) => daemon.on('exit', resolve));
    daemon.kill('SIGTERM');
    assert.equal(await exited, 0, 'knowd serve exits 0 after SIGTERM');
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('the models list has one model per mode', async () => {
  const ids = [];
  for await (const m of client(READER).models.list()) ids.push(m.id);
  assert.ok(ids.includes('knowd-tiny'), ids.join(' '));
  assert.ok(ids.includes('knowd-tiny:rag'), ids.join(' '));
  assert.ok(ids.includes('knowd-tiny:closed-book'), ids.join(' '));
});

test('a chat completion is gRPC Ask’s answer, with its citations', async () => {
  for (const question of questions) {
    const final = grpcAsk(question, 'rag');
    const completion = await client(READER).chat.completions.create({
      model: 'knowd-tiny:rag',
      messages: [{ role: 'user', content: question }],
      knowd: { namespace: 'team-a' },
    });
    assert.equal(completion.object, 'chat.completion');
    assert.equal(completion.choices[0].message.role, 'assistant');
    assert.equal(completion.choices[0].message.content, final.answer);
    assert.ok(['stop', 'length'].includes(completion.choices[0].finish_reason));
    assert.ok(completion.usage.completion_tokens > 0);
    assert.equal(completion.knowd.mode, 'rag');
    assert.equal(completion.knowd.namespace, 'team-a');
    assertSameCitations(completion.knowd, final);
  }
});

test('a streamed chat completion concatenates to the same answer', async () => {
  for (const question of questions) {
    const final = grpcAsk(question, 'rag');
    const stream = await client(READER).chat.completions.create({
      model: 'knowd-tiny:rag',
      messages: [{ role: 'user', content: question }],
      stream: true,
      stream_options: { include_usage: true },
      knowd: { namespace: 'team-a' },
    });
    let text = '';
    let finish = null;
    let extras = null;
    let usage = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      const choice = chunk.choices[0];
      if (choice) {
        text += choice.delta?.content ?? '';
        finish = choice.finish_reason ?? finish;
      }
      extras = chunk.knowd ?? extras;
      usage = chunk.usage ?? usage;
    }
    assert.equal(text, final.answer);
    assert.ok(['stop', 'length'].includes(finish));
    assertSameCitations(extras, final);
    assert.ok(usage.completion_tokens > 0);
  }
});

test('a completion answers the prompt', async () => {
  const final = grpcAsk(questions[0], 'rag');
  const completion = await client(READER).completions.create({
    model: 'knowd-tiny:rag',
    prompt: questions[0],
    knowd: { namespace: 'team-a' },
  });
  assert.equal(completion.choices[0].text, final.answer);
});

test('a bad token is 401, a namespace not granted 403, an unknown model 404', async () => {
  const ask = (c, body) =>
    c.chat.completions.create({ messages: [{ role: 'user', content: questions[0] }], ...body });
  await assert.rejects(
    ask(client('not-a-token'), { model: 'knowd-tiny:rag', knowd: { namespace: 'team-a' } }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key',
  );
  await assert.rejects(
    ask(client(READER), { model: 'knowd-tiny:rag', knowd: { namespace: 'default' } }),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.status === 403 && e.type === 'permission_error',
  );
  await assert.rejects(
    ask(client(READER), { model: 'gpt-4o', knowd: { namespace: 'team-a' } }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found',
  );
  await assert.rejects(
    ask(client(READER), { model: 'knowd-tiny:rag', stream: true, knowd: { namespace: 'default' } }),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.status === 403,
  );
});

// A session through REST, then chat completions with knowd.session_id in the body: the answer is
// gRPC Ask's under the same session (`knowctl session ask --json`), streamed or not.
test('knowd.session_id asks under a session, as gRPC Ask does', async (t) => {
  const context = [
    ['Damka Gralinvo', 'accountant', 'free'], ['Coros Zangorbel', 'designer', 'fun'],
    ['Ruloseth Gilgra', 'nurse', 'new'], ['Yoxi Fenbello', 'accountant', 'free'],
    ['Mivel Damxisa', 'designer', 'fun'], ['Risub Wynlintem', 'nurse', 'new'],
  ].map(([name, job, label]) => `Q: ${name}: ${job}\nA: ${label}\n`).join('');
  const created = await fetch(`http://${http}/v1/namespaces/team-a/sessions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ text: context, label: 'occupations' }),
  });
  const session = await created.json();
  if (created.status === 400 && session.error?.status === 'FAILED_PRECONDITION') {
    t.skip(`the bundle has no session mapper: ${session.error.message}`);
    return;
  }
  assert.equal(created.status, 200, JSON.stringify(session));
  for (const question of ['Kusa Corvel: designer', 'Lorenor Ithmo: nurse']) {
    const final = JSON.parse(
      knowctlRun(READER, ['--namespace', 'team-a', 'session', 'ask', session.id, question, '--json']),
    );
    assert.equal(final.session_id, session.id);
    const rest = await fetch(`http://${http}/v1/namespaces/team-a/ask`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${READER}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ question, sessionId: session.id }),
    });
    assert.equal((await rest.json()).answer, final.answer);
    const body = {
      model: 'knowd-tiny',
      messages: [{ role: 'user', content: question }],
      knowd: { namespace: 'team-a', session_id: session.id },
    };
    const completion = await client(READER).chat.completions.create(body);
    assert.equal(completion.choices[0].message.content, final.answer);
    assert.equal(completion.knowd.session_id, session.id);
    assert.equal(completion.knowd.mode, 'closed-book');
    let text = '';
    let extras = null;
    for await (const chunk of await client(READER).chat.completions.create({ ...body, stream: true })) {
      text += chunk.choices[0]?.delta?.content ?? '';
      extras = chunk.knowd ?? extras;
    }
    assert.equal(text, final.answer);
    assert.equal(extras.session_id, session.id);
  }
  await assert.rejects(
    client(READER).chat.completions.create({
      model: 'knowd-tiny',
      messages: [{ role: 'user', content: 'Kusa Corvel: designer' }],
      knowd: { namespace: 'team-a', session_id: 'no-such-session' },
    }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && /no-such-session/.test(e.message),
  );
  await assert.rejects(
    client(READER).chat.completions.create({
      model: 'knowd-tiny',
      messages: [{ role: 'user', content: 'Kusa Corvel: designer' }],
      knowd: { namespace: 'team-a', session_id: 7 },
    }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'knowd.session_id',
  );
});
