// knowd's web console: every action is a call to the daemon's REST API (docs/http-api.md) on the
// port that served this page, with the token from the header's field.
const $ = (selector, root = document) => root.querySelector(selector);
const MODES = ['closed-book', 'mac', 'rag', 'mac+rag'];

const tokenInput = $('#token');
const nsInput = $('#namespace');
tokenInput.value = localStorage.getItem('knowd.token') ?? '';
nsInput.value = localStorage.getItem('knowd.namespace') ?? 'default';
tokenInput.addEventListener('change', () => {
  localStorage.setItem('knowd.token', tokenInput.value);
  refreshSessions();
});
nsInput.addEventListener('change', () => {
  localStorage.setItem('knowd.namespace', nsInput.value);
  refreshStats();
  refreshSessions();
});

const ns = () => encodeURIComponent(nsInput.value.trim() || 'default');

function headers(contentType = 'application/json') {
  const h = { 'Content-Type': contentType };
  if (tokenInput.value) h.Authorization = `Bearer ${tokenInput.value}`;
  return h;
}

// A REST call: resolves to the response's JSON, or throws Error("<status> <message>").
async function call(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => null);
  if (!res.ok) throw new Error(errorText(res.status, json));
  return json;
}

function errorText(status, json) {
  const e = json?.error;
  return e ? `${status} ${e.status ?? ''}: ${e.message}` : `HTTP ${status}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// Reads an NDJSON response line by line.
async function* ndjson(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// ---- ingest ----

async function documentsToIngest() {
  const docs = [];
  const text = $('#ingest-text').value;
  if (text.trim()) {
    const id = $('#ingest-id').value.trim() || `doc-${Date.now()}`;
    const source = $('#ingest-source').value.trim();
    docs.push({ id, text, ...(source ? { metadata: { source } } : {}) });
  }
  for (const file of $('#ingest-files').files) {
    const content = await file.text();
    if (/\.(jsonl|ndjson)$/i.test(file.name)) {
      for (const line of content.split('\n')) if (line.trim()) docs.push(JSON.parse(line));
    } else {
      docs.push({ id: file.name, text: content, metadata: { source: file.name } });
    }
  }
  return docs;
}

$('#ingest-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const log = $('#ingest-log');
  const progress = $('#ingest-progress');
  const button = $('#ingest-submit');
  let docs;
  try {
    docs = await documentsToIngest();
  } catch (e) {
    log.prepend(el('li', { class: 'error' }, `not ingested: ${e.message}`));
    return;
  }
  if (docs.length === 0) return;
  button.disabled = true;
  progress.hidden = false;
  progress.max = docs.length;
  progress.value = 0;
  let stored = 0;
  try {
    // One NDJSON request: one result line per document, each sent once the document is durable.
    const res = await fetch(`/v1/namespaces/${ns()}/documents`, {
      method: 'POST',
      headers: headers('application/x-ndjson'),
      body: docs.map((d) => JSON.stringify(d)).join('\n'),
    });
    if (!res.ok) throw new Error(errorText(res.status, await res.json().catch(() => null)));
    for await (const r of ndjson(res)) {
      progress.value = r.position + 1;
      if (r.error) {
        log.prepend(el('li', { class: 'error' }, `${r.id}: ${r.error.status}: ${r.error.message}`));
      } else {
        stored++;
        log.prepend(
          el('li', { class: 'ok', 'data-id': r.id },
             `${r.id}: ${r.passages} passage${r.passages === 1 ? '' : 's'}${r.replaced ? ' (replaced)' : ''}`),
        );
      }
    }
    log.prepend(el('li', { class: 'summary' }, `${stored} of ${docs.length} stored`));
    $('#ingest-text').value = '';
    $('#ingest-id').value = '';
    $('#ingest-files').value = '';
  } catch (e) {
    log.prepend(el('li', { class: 'error' }, e.message));
  } finally {
    button.disabled = false;
    refreshStats();
  }
});

// ---- ask: the four modes side by side, each streamed ----

function renderCitations(list, cited) {
  list.replaceChildren(
    ...cited.map((c) =>
      el('li', { 'data-document-id': c.documentId },
         el('a', { href: '#', class: 'doc-link', onclick: (e) => { e.preventDefault(); viewDocument(c.documentId); } },
            `${c.documentId}#${c.index ?? 0}`),
         el('span', { class: 'score' }, ` ${Number(c.score ?? 0).toFixed(3)} `),
         el('q', {}, c.text)),
    ),
  );
}

async function askMode(column, question, sessionId) {
  const text = $('.text', column);
  const meta = $('.meta', column);
  const citations = $('.citations', column);
  column.dataset.state = 'streaming';
  text.textContent = '';
  meta.textContent = '';
  citations.replaceChildren();
  try {
    const res = await fetch(`/v1/namespaces/${ns()}/ask`, {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify({ question, mode: column.dataset.mode, stream: true, ...(sessionId ? { sessionId } : {}) }),
    });
    if (!res.ok) throw new Error(errorText(res.status, await res.json().catch(() => null)));
    for await (const chunk of ndjson(res)) {
      if (chunk.error) throw new Error(`${chunk.error.status}: ${chunk.error.message}`);
      if (chunk.text) text.textContent += chunk.text;
      if (chunk.final) {
        const f = chunk.final;
        text.textContent = f.answer;
        if (f.nothingInMemory) text.textContent = '(nothing in memory on this question)';
        const t = f.timings ?? {};
        meta.textContent = `${f.stopReason} · ${t.generatedTokens ?? 0} tokens · ${Number(t.totalMs ?? 0).toFixed(1)} ms · relevance ${Number(f.relevance ?? 0).toFixed(2)}${f.sessionId ? ` · session ${f.sessionId}` : ''}`;
        renderCitations(citations, f.cited ?? []);
      }
    }
    column.dataset.state = 'done';
  } catch (e) {
    text.textContent = '';
    meta.textContent = e.message;
    column.dataset.state = 'error';
  }
}

$('#ask-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const question = $('#question').value.trim();
  if (!question) return;
  const sessionId = $('#ask-session').value;
  const alone = $('.answer[data-mode="closed-book"] h3 small');
  alone.textContent = sessionId ? alone.dataset.session : alone.dataset.alone;
  $('#ask-submit').disabled = true;
  await Promise.all(MODES.map((m) => askMode($(`.answer[data-mode="${m}"]`), question, sessionId)));
  $('#ask-submit').disabled = false;
  refreshStats();
});

// ---- sessions: list, create from pasted text, delete; Ask's session choice ----

function renderSessionChoice(sessions) {
  const select = $('#ask-session');
  const chosen = select.value;
  select.replaceChildren(
    el('option', { value: '' }, 'no session'),
    ...sessions.map((s) => el('option', { value: s.id }, s.label ? `${s.label} (${s.id.slice(0, 8)})` : s.id)),
  );
  select.value = sessions.some((s) => s.id === chosen) ? chosen : '';
}

async function refreshSessions() {
  const body = $('#sessions tbody');
  try {
    const r = await call('GET', `/v1/namespaces/${ns()}/sessions`);
    const sessions = r.sessions ?? [];
    body.replaceChildren(
      ...sessions.map((s) =>
        el('tr', { 'data-session-id': s.id },
           el('td', {}, el('code', {}, s.id)),
           el('td', { class: 'label' }, s.label),
           el('td', { class: 'bytes', title: `${s.stateBytes} bytes` }, bytes(s.stateBytes)),
           el('td', { class: 'chunks' }, String(s.chunks)),
           el('td', { class: 'tokens' }, String(s.tokens)),
           el('td', { class: 'expires' }, s.expiresUnix ? new Date(s.expiresUnix * 1000).toISOString() : 'never'),
           el('td', {}, el('button', { type: 'button', class: 'small danger', onclick: () => deleteSession(s.id) }, 'delete'))),
      ),
    );
    if (sessions.length === 0) body.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: 7 }, 'no live session in this namespace')));
    renderSessionChoice(sessions);
  } catch (e) {
    body.replaceChildren(el('tr', { class: 'error' }, el('td', { colspan: 7 }, e.message)));
    renderSessionChoice([]);
  }
}

$('#session-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = $('#session-text').value;
  const status = $('#session-status');
  if (!text.trim()) {
    status.className = 'meta error';
    status.textContent = 'paste the context to absorb first';
    return;
  }
  const request = { text };
  const label = $('#session-label').value.trim();
  if (label) request.label = label;
  const ttl = Number($('#session-ttl').value);
  if (ttl > 0) request.ttlSeconds = ttl;
  $('#session-submit').disabled = true;
  try {
    const s = await call('POST', `/v1/namespaces/${ns()}/sessions`, request);
    status.className = 'meta ok';
    status.dataset.sessionId = s.id;
    status.textContent = `created ${s.id}: ${s.chunks} chunk(s), ${s.tokens} tokens in ${bytes(s.stateBytes)}`;
    $('#session-text').value = '';
    $('#session-label').value = '';
  } catch (e) {
    status.className = 'meta error';
    status.textContent = e.message;
  } finally {
    $('#session-submit').disabled = false;
    await refreshSessions();
    refreshStats();
  }
});

async function deleteSession(id) {
  const status = $('#session-status');
  try {
    await call('DELETE', `/v1/namespaces/${ns()}/sessions/${encodeURIComponent(id)}`);
    status.className = 'meta ok';
    status.textContent = `deleted ${id}`;
  } catch (e) {
    status.className = 'meta error';
    status.textContent = e.message;
  }
  await refreshSessions();
  refreshStats();
}

$('#sessions-refresh').addEventListener('click', refreshSessions);

// ---- search, view, forget ----

$('#search-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = $('#results tbody');
  const query = $('#query').value.trim();
  if (!query) return;
  const request = { query, topK: Number($('#top-k').value) || 0 };
  if ($('#retrieval').value) request.retrieval = $('#retrieval').value;
  try {
    const r = await call('POST', `/v1/namespaces/${ns()}/search`, request);
    body.replaceChildren(
      ...r.passages.map((p) =>
        el('tr', { 'data-document-id': p.documentId },
           el('td', {}, `${p.documentId}#${p.index}`),
           el('td', { class: 'score' }, Number(p.score).toFixed(3)),
           el('td', {}, p.text),
           el('td', {}, el('button', { type: 'button', class: 'small', onclick: () => viewDocument(p.documentId) }, 'view'))),
      ),
    );
    if (r.passages.length === 0) body.replaceChildren(el('tr', {}, el('td', { colspan: 4 }, 'no passage matches')));
  } catch (e) {
    body.replaceChildren(el('tr', { class: 'error' }, el('td', { colspan: 4 }, e.message)));
  }
});

async function viewDocument(id) {
  $('#doc-id').value = id;
  const out = $('#document');
  try {
    const d = await call('GET', `/v1/namespaces/${ns()}/documents/${encodeURIComponent(id)}`);
    const meta = Object.entries(d.metadata ?? {}).map(([k, v]) => `${k}: ${v}`).join(' · ');
    out.replaceChildren(
      el('h3', {}, d.id),
      el('p', { class: 'meta' }, `${d.passages.length} passage(s) · ingested ${new Date(d.ingestTimeUnix * 1000).toISOString()}${meta ? ' · ' + meta : ''}`),
      el('pre', {}, d.passages.map((p) => p.text).join('')),
    );
  } catch (e) {
    out.replaceChildren(el('p', { class: 'error' }, e.message));
  }
}

$('#get-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if ($('#doc-id').value.trim()) viewDocument($('#doc-id').value.trim());
});

$('#forget-submit').addEventListener('click', async () => {
  const id = $('#doc-id').value.trim();
  if (!id) return;
  const out = $('#document');
  try {
    const r = await call('POST', `/v1/namespaces/${ns()}/forget`, { ids: [id] });
    out.replaceChildren(
      el('p', { class: r.forgotten.length ? 'ok' : 'error', id: 'forget-result' },
         r.forgotten.length ? `forgot ${id} (${r.passages} passage(s))` : `${id} is not stored`),
    );
  } catch (e) {
    out.replaceChildren(el('p', { class: 'error' }, e.message));
  }
  refreshStats();
});

// ---- the bank and live metrics ----

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (n = Number(n); n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fill(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', { 'data-key': k }, String(v))]));
}

async function refreshStats() {
  const nsName = nsInput.value.trim() || 'default';
  try {
    const s = await call('GET', `/v1/stats?namespace=${encodeURIComponent(nsName)}`);
    fill($('#stats'), [
      ['documents', s.documents],
      ['passages', s.passages],
      ['sessions', s.sessions],
      ['session bytes', bytes(s.sessionBytes)],
      ['namespace', nsName],
      ['bytes per modulation', bytes(s.bytesPerModulation)],
      ['KV cache per passage', bytes(s.kvBytesPerMedianPassage)],
      ['disk', bytes(s.diskBytes)],
      ['model', s.model],
      ['adapter', s.adapter || '(none)'],
      ['version', s.version],
      ['uptime', `${Math.round(s.uptimeSeconds)} s`],
    ]);
  } catch (e) {
    $('#stats').replaceChildren(el('dd', { class: 'error' }, e.message));
  }
  try {
    const res = await fetch('/metrics');
    const calls = {};
    const sums = {};
    const counts = {};
    let generated = 0;
    let rejected = 0;
    for (const line of (await res.text()).split('\n')) {
      let m;
      if ((m = line.match(/^knowd_rpc_total\{method="([^"]+)",code="([^"]+)"\} (\S+)/))) {
        calls[m[1]] = (calls[m[1]] ?? 0) + Number(m[3]);
      } else if ((m = line.match(/^knowd_rpc_duration_seconds_sum\{method="([^"]+)"\} (\S+)/))) {
        sums[m[1]] = Number(m[2]);
      } else if ((m = line.match(/^knowd_rpc_duration_seconds_count\{method="([^"]+)"\} (\S+)/))) {
        counts[m[1]] = Number(m[2]);
      } else if ((m = line.match(/^knowd_generated_tokens_total (\S+)/))) {
        generated = Number(m[1]);
      } else if ((m = line.match(/^knowd_rejected_total\{[^}]*\} (\S+)/))) {
        rejected += Number(m[1]);
      }
    }
    fill($('#metrics'), [
      ...Object.entries(calls).map(([method, n]) => [
        method,
        counts[method] ? `${n} calls · mean ${((1000 * sums[method]) / counts[method]).toFixed(1)} ms` : `${n} calls`,
      ]),
      ['generated tokens', generated],
      ['refused (queue full)', rejected],
    ]);
  } catch (e) {
    $('#metrics').replaceChildren(el('dd', { class: 'error' }, e.message));
  }
}

async function refreshReady() {
  const pill = $('#ready');
  try {
    const res = await fetch('/readyz');
    pill.textContent = res.ok ? 'ready' : 'not ready';
    pill.className = `pill ${res.ok ? 'ok' : 'error'}`;
  } catch {
    pill.textContent = 'unreachable';
    pill.className = 'pill error';
  }
}

$('#stats-refresh').addEventListener('click', refreshStats);
refreshReady();
refreshStats();
refreshSessions();
setInterval(() => {
  if (document.visibilityState === 'visible') {
    refreshReady();
    refreshStats();
  }
}, 5000);
