// The web console (daemon/console/, served by `knowd serve` at /) in real headless Chromium,
// driven by puppeteer-core, against the real daemon on loopback with a tokens file: the page is
// loaded, the token typed in, one document pasted into the ingest form and the rest of the world
// fixture uploaded as a .jsonl file; one question asked in the four modes side by side, each
// answer and its citations checked against the REST API's answer to the same request; a search,
// a document viewed and forgotten, and the question asked again; a session created from pasted
// text, listed, chosen for a question (each column REST's answer with the same session) and
// deleted. Screenshots of each step go to KNOWD_SCREENSHOT_DIR; their paths are printed.
//
// Run by ctest (tests/console/CMakeLists.txt), which skips it (exit 77) without /usr/bin/chromium
// or client/js's puppeteer-core.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';

const jsDir = process.env.KNOWD_JS_DIR;
const screenshots = process.env.KNOWD_SCREENSHOT_DIR;
const chromium = process.env.KNOWD_CHROMIUM ?? '/usr/bin/chromium';
const puppeteer = createRequire(path.join(jsDir, 'package.json'))('puppeteer-core');
const { ADMIN, Daemon, worldPassages, worldQuestions } = await import(
  pathToFileURL(path.join(jsDir, 'test', 'support', 'daemon.mjs'))
);

const MODES = ['closed-book', 'mac', 'rag', 'mac+rag'];
const passages = worldPassages();
const question = worldQuestions().find((q) => q.id === 'test-q0');
let daemon;
let browser;
let page;
const shots = [];

async function shot(name) {
  const file = path.join(screenshots, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  shots.push(file);
}

// The REST API's answer to the question the console asks in `mode`.
async function restAsk(mode) {
  const r = await daemon.rest('POST', '/v1/namespaces/team-a/ask', { question: question.question, mode });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

// The four answer columns once all are finished: {mode: {state, text, meta, citations}}.
async function readAnswers() {
  await page.waitForFunction(
    () => [...document.querySelectorAll('.answer')].every((a) => ['done', 'error'].includes(a.dataset.state)),
    { timeout: 120000 },
  );
  return page.$$eval('.answer', (columns) =>
    Object.fromEntries(
      columns.map((a) => [
        a.dataset.mode,
        {
          state: a.dataset.state,
          text: a.querySelector('.text').textContent,
          meta: a.querySelector('.meta').textContent,
          citations: [...a.querySelectorAll('.citations li')].map((li) => ({
            documentId: li.dataset.documentId,
            text: li.querySelector('q').textContent,
          })),
        },
      ]),
    ),
  );
}

async function ask(text = question.question) {
  await page.$$eval('.answer', (columns) => columns.forEach((a) => delete a.dataset.state));
  await page.click('#question', { clickCount: 3 });
  await page.type('#question', text);
  await page.click('#ask-submit');
  return readAnswers();
}

before(async () => {
  fs.mkdirSync(screenshots, { recursive: true });
  daemon = await Daemon.start();
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: [
      ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      '--disable-dev-shm-usage',
      '--disable-gpu',
    ],
  });
  page = await browser.newPage();
  // make test runs this beside other daemons on few cores: wait generously.
  page.setDefaultTimeout(120000);
  page.setDefaultNavigationTimeout(120000);
  await page.setViewport({ width: 1500, height: 1000 });
  page.on('pageerror', (e) => console.error('page error:', e.message));
});

after(async () => {
  await browser?.close();
  await daemon?.stop();
  for (const file of shots) console.log(`screenshot: ${file}`);
});

test('the console loads from the daemon, with nothing from elsewhere', async () => {
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  const res = await page.goto(`http://${daemon.http}/`, { waitUntil: 'networkidle0' });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-security-policy'], /default-src 'self'/);
  assert.equal(await page.title(), 'knowd console');
  await page.waitForFunction(() => document.querySelector('#ready').textContent === 'ready');
  for (const url of requests) assert.ok(url.startsWith(`http://${daemon.http}/`), url);
  // Without the token the bank's stats are refused (401), as the console shows.
  await page.waitForFunction(() => /401/.test(document.querySelector('#stats').textContent));
  await page.type('#token', ADMIN);
  await page.$eval('#token', (e) => e.dispatchEvent(new Event('change')));
  await page.click('#namespace', { clickCount: 3 });
  await page.type('#namespace', 'team-a');
  await page.$eval('#namespace', (e) => e.dispatchEvent(new Event('change')));
  await page.waitForFunction(
    () => document.querySelector('#stats dd[data-key="documents"]')?.textContent === '0',
  );
  // The same file under /console/.
  const direct = await fetch(`http://${daemon.http}/console/console.js`);
  assert.equal(direct.status, 200);
  assert.match(direct.headers.get('content-type'), /^text\/javascript/);
  assert.equal((await fetch(`http://${daemon.http}/console/nothing.js`)).status, 404);
});

test('ingest: a pasted document, then a .jsonl file with a progress bar', async () => {
  const first = passages[0];
  await page.type('#ingest-id', first.id);
  await page.type('#ingest-source', 'pasted');
  await page.$eval('#ingest-text', (e, text) => (e.value = text), first.text);
  await page.click('#ingest-submit');
  await page.waitForSelector(`#ingest-log li.ok[data-id="${first.id}"]`);
  assert.match(await page.$eval('#ingest-log li.summary', (e) => e.textContent), /^1 of 1 stored$/);
  const stored = await daemon.rest('GET', `/v1/namespaces/team-a/documents/${first.id}`);
  assert.equal(stored.json.passages.map((p) => p.text).join(''), first.text);
  assert.deepEqual(stored.json.metadata, { source: 'pasted' });

  const file = path.join(path.dirname(screenshots), 'rest-of-world.jsonl');
  fs.writeFileSync(file, passages.slice(1).map((p) => JSON.stringify(p)).join('\n'));
  const input = await page.$('#ingest-files');
  await input.uploadFile(file);
  await page.click('#ingest-submit');
  await page.waitForFunction(
    (n) => document.querySelector('#ingest-log li.summary')?.textContent === `${n} of ${n} stored`,
    { timeout: 120000 },
    passages.length - 1,
  );
  assert.equal(await page.$eval('#ingest-progress', (e) => e.value), passages.length - 1);
  assert.equal(await page.$$eval('#ingest-log li.ok', (l) => l.length), passages.length);
  await page.waitForFunction(
    (n) => document.querySelector('#stats dd[data-key="documents"]')?.textContent === String(n),
    {},
    passages.length,
  );
  await shot('ingest');
});

test('ask: four answers side by side, each REST’s answer, with citations', async () => {
  const answers = await ask();
  for (const mode of MODES) {
    const expected = await restAsk(mode);
    const got = answers[mode];
    assert.equal(got.state, 'done', `${mode}: ${got.meta}`);
    assert.equal(expected.nothingInMemory, false);
    assert.equal(got.text, expected.answer, mode);
    assert.ok(got.text.length > 0, mode);
    assert.deepEqual(got.citations, expected.cited.map((c) => ({ documentId: c.documentId, text: c.text })), mode);
    assert.match(got.meta, new RegExp(`^${expected.stopReason} · \\d+ tokens`));
    if (mode !== 'closed-book') assert.equal(got.citations[0].documentId, 'test-p0', mode);
  }
  assert.equal(answers.rag.text, question.answer);
  assert.equal(answers['mac+rag'].text, question.answer);
  await shot('answers');
});

test('search, view and forget a document, then ask again', async () => {
  await page.type('#query', 'Etheth Rulhal');
  await page.select('#retrieval', 'lexical');
  await page.click('#search-submit');
  await page.waitForSelector('#results tbody tr[data-document-id="test-p0"]');
  await page.click('#results tbody tr[data-document-id="test-p0"] button');
  await page.waitForFunction(() => document.querySelector('#document h3')?.textContent === 'test-p0');
  assert.equal(await page.$eval('#document pre', (e) => e.textContent), passages[0].text);
  await shot('search');

  await page.click('#forget-submit');
  await page.waitForSelector('#forget-result.ok');
  assert.match(await page.$eval('#forget-result', (e) => e.textContent), /^forgot test-p0 \(1 passage\(s\)\)$/);
  assert.equal((await daemon.rest('GET', '/v1/namespaces/team-a/documents/test-p0')).status, 404);

  const answers = await ask();
  for (const mode of MODES) {
    const expected = await restAsk(mode);
    const got = answers[mode];
    assert.equal(got.state, 'done', `${mode}: ${got.meta}`);
    // Nothing relevant is left: the memory modes say so instead of guessing.
    assert.equal(expected.nothingInMemory, mode !== 'closed-book', mode);
    if (expected.nothingInMemory) {
      assert.equal(got.text, '(nothing in memory on this question)');
      assert.match(got.meta, /^nothing_in_memory · 0 tokens/);
    } else {
      assert.equal(got.text, expected.answer, mode);
    }
    assert.ok(got.citations.every((c) => c.documentId !== 'test-p0'), mode);
  }
  await shot('forgotten');
});

// Demonstrations of one in-context task, the session's context, and a question of the task.
const CONTEXT = [
  ['Damka Gralinvo', 'accountant', 'free'], ['Coros Zangorbel', 'designer', 'fun'],
  ['Ruloseth Gilgra', 'nurse', 'new'], ['Yoxi Fenbello', 'accountant', 'free'],
  ['Mivel Damxisa', 'designer', 'fun'], ['Risub Wynlintem', 'nurse', 'new'],
].map(([name, job, label]) => `Q: ${name}: ${job}\nA: ${label}\n`).join('');
const SESSION_QUESTION = 'Kusa Corvel: designer';

test('sessions: created from pasted text, listed, asked with, deleted', async () => {
  const sessionRows = () =>
    page.$$eval('#sessions tbody tr[data-session-id]', (rows) =>
      rows.map((r) => ({
        id: r.dataset.sessionId,
        label: r.querySelector('.label').textContent,
        bytes: r.querySelector('.bytes').title,
        chunks: r.querySelector('.chunks').textContent,
        tokens: r.querySelector('.tokens').textContent,
        expires: r.querySelector('.expires').textContent,
      })),
    );
  await page.waitForSelector('#sessions tbody tr.empty');
  await page.type('#session-label', 'occupations');
  await page.$eval('#session-text', (e, text) => (e.value = text), CONTEXT);
  await page.click('#session-submit');
  await page.waitForSelector('#sessions tbody tr[data-session-id]');
  const rows = await sessionRows();
  assert.equal(rows.length, 1);
  const id = rows[0].id;
  assert.match(await page.$eval('#session-status', (e) => e.textContent), new RegExp(`^created ${id}: `));

  // The row is what REST lists.
  const listed = await daemon.rest('GET', '/v1/namespaces/team-a/sessions');
  assert.equal(listed.status, 200, JSON.stringify(listed.json));
  assert.equal(listed.json.sessions.length, 1);
  const s = listed.json.sessions[0];
  assert.equal(s.id, id);
  assert.equal(s.label, 'occupations');
  assert.ok(s.stateBytes > 0 && s.chunks >= 1 && s.tokens > 0, JSON.stringify(s));
  assert.deepEqual(rows[0], {
    id,
    label: 'occupations',
    bytes: `${s.stateBytes} bytes`,
    chunks: String(s.chunks),
    tokens: String(s.tokens),
    expires: new Date(s.expiresUnix * 1000).toISOString(),
  });
  // The bank's panel counts it.
  await page.click('#stats-refresh');
  await page.waitForFunction(() => document.querySelector('#stats dd[data-key="sessions"]')?.textContent === '1');

  // Asked with the session: each column is REST's answer to the same question, mode and session;
  // a question of the session's task, then one of the world's whose passage is still stored.
  await page.select('#ask-session', id);
  const worldQuestion = worldQuestions().find((q) => q.passage_id !== 'test-p0' && q.oracle_correct);
  for (const text of [SESSION_QUESTION, worldQuestion.question]) {
    const answers = await ask(text);
    assert.equal(
      await page.$eval('.answer[data-mode="closed-book"] h3 small', (e) => e.textContent),
      'the session alone',
    );
    let answered = 0;
    for (const mode of MODES) {
      const r = await daemon.rest('POST', '/v1/namespaces/team-a/ask', { question: text, mode, sessionId: id });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const expected = r.json;
      const got = answers[mode];
      assert.equal(got.state, 'done', `${mode}: ${got.meta}`);
      if (expected.nothingInMemory) {
        // Nothing generated: no session applied, none named.
        assert.equal(expected.sessionId, '', mode);
        assert.equal(got.text, '(nothing in memory on this question)', mode);
        assert.ok(!got.meta.includes('session'), `${mode}: ${got.meta}`);
      } else {
        answered++;
        assert.equal(expected.sessionId, id, mode);
        assert.equal(got.text, expected.answer, `${mode}: ${text}`);
        assert.ok(got.meta.endsWith(` · session ${id}`), `${mode}: ${got.meta}`);
        assert.deepEqual(got.citations, (expected.cited ?? []).map((c) => ({ documentId: c.documentId, text: c.text })), mode);
      }
    }
    // The session alone always answers; on the world's question the memory modes too.
    assert.ok(answers['closed-book'].text.length > 0);
    if (text !== SESSION_QUESTION) assert.equal(answered, MODES.length, text);
  }
  await shot('sessions');

  // Deleted: gone from the list, the ask box and the daemon.
  await page.click(`#sessions tbody tr[data-session-id="${id}"] button`);
  await page.waitForSelector('#sessions tbody tr.empty');
  assert.equal(await page.$eval('#session-status', (e) => e.textContent), `deleted ${id}`);
  assert.deepEqual(await page.$$eval('#ask-session option', (o) => o.map((x) => x.value)), ['']);
  assert.deepEqual((await daemon.rest('GET', '/v1/namespaces/team-a/sessions')).json.sessions, []);
  const gone = await daemon.rest('POST', '/v1/namespaces/team-a/ask', { question: SESSION_QUESTION, sessionId: id });
  assert.equal(gone.status, 404);
  await page.waitForFunction(() => document.querySelector('#stats dd[data-key="sessions"]')?.textContent === '0');
});
