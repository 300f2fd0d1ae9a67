// @knowd/client's sessions against the real daemon, serving knowd-tiny with a session mapper
// written here (random weights from a fixed seed: the serving path is under test, not what a
// trained mapper learned): create, ask under the session, append, list, delete, and the errors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { InvalidArgument, KnowdClient, NotFound, PermissionDenied } from '@knowd/client';

import { Daemon, READER, WRITER, env } from './support/daemon.mjs';

// knowd-tiny: hidden 192, 6 query heads and 2 key/value heads of 32, intermediate 512, 4 layers.
const [HIDDEN, Q_DIM, KV_DIM, INTERMEDIATE, LAYERS, RANK] = [192, 192, 64, 512, 4, 4];

// A seeded normal generator (mulberry32 + Box-Muller).
function normal(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return (mean, scale) =>
    mean + scale * Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
}

function writeSafetensors(file, tensors) {
  const header = {};
  const buffers = [];
  let offset = 0;
  for (const [name, shape, values] of tensors) {
    const bytes = Buffer.from(new Float32Array(values).buffer);
    header[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    buffers.push(bytes);
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const size = Buffer.alloc(8);
  size.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(file, Buffer.concat([size, Buffer.from(text), ...buffers]));
}

function writeAdapter(dir) {
  fs.mkdirSync(dir);
  const source = path.join(env('KNOWD_MODEL'), 'adapter');
  for (const name of fs.readdirSync(source)) {
    if (!name.startsWith('session_mapper')) fs.symlinkSync(path.join(source, name), path.join(dir, name));
  }
  const draw = normal(5);
  const sites = [[1, 'o', Q_DIM, HIDDEN], [LAYERS - 1, 'down', INTERMEDIATE, HIDDEN]];
  const tensors = [];
  const add = (name, shape, scale, mean = 0) =>
    tensors.push([name, shape, Array.from({ length: shape.reduce((x, y) => x * y) }, () => draw(mean, scale))]);
  sites.forEach(([, , nIn, nOut], i) => {
    add(`site${i}.query`, [RANK, KV_DIM], KV_DIM ** -0.5);
    add(`site${i}.proj`, [RANK, KV_DIM], KV_DIM ** -0.5);
    add(`site${i}.gate_weight`, [RANK, RANK], 0.3);
    add(`site${i}.gate_bias`, [RANK], 0.1, 1);
    add(`site${i}.w2`, [RANK, nIn], 2 * nIn ** -0.5);
    add(`site${i}.w1`, [nOut, RANK], 2);
  });
  writeSafetensors(path.join(dir, 'session_mapper.safetensors'), tensors);
  fs.writeFileSync(
    path.join(dir, 'session_mapper.json'),
    JSON.stringify({
      format: 'knowd-session-mapper', version: 1, rank: RANK, rank_out: RANK, demos_per_chunk: 4,
      max_chunk_tokens: 96, sites: sites.map(([layer, projection]) => ({ layer, projection })),
    }),
  );
}

const names = ['Damka Gralinvo', 'Coros Zangorbel', 'Ruloseth Gilgra', 'Yoxi Fenbello', 'Mivel Damxisa'];
const jobs = [['accountant', 'free'], ['designer', 'fun'], ['nurse', 'new']];
const demonstrations = (begin, count) =>
  Array.from({ length: count }, (_, k) => begin + k)
    .map((i) => `Q: ${names[i % names.length]}: ${jobs[i % 3][0]}\nA: ${jobs[i % 3][1]}\n`)
    .join('');

let daemon;
let adapterDir;
const clients = [];
const client = (token) => {
  const c = new KnowdClient({ target: daemon.grpc, token, namespace: 'team-a', timeoutMs: 120000 });
  clients.push(c);
  return c;
};

before(async () => {
  adapterDir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowd-js-adapter-'));
  writeAdapter(path.join(adapterDir, 'adapter'));
  daemon = await Daemon.start(['--adapter', path.join(adapterDir, 'adapter')]);
});

after(async () => {
  for (const c of clients) c.close();
  await daemon?.stop();
  if (adapterDir) fs.rmSync(adapterDir, { recursive: true, force: true });
});

test('a session is created, asked under, appended to, listed and deleted', async () => {
  const writer = client(WRITER);
  const small = await writer.createSession([demonstrations(0, 4), demonstrations(4, 4)], {
    ttlSeconds: 600,
    label: 'occupations',
  });
  assert.equal(small.namespace, 'team-a');
  assert.equal(small.label, 'occupations');
  assert.ok(small.chunks >= 2 && small.tokens > 0 && small.stateBytes > 0);
  assert.equal(small.expiresUnix, small.updatedUnix + 600);
  const big = await writer.createSession(demonstrations(0, 64));
  assert.equal(big.stateBytes, small.stateBytes);

  const answer = await writer.ask('Mivel Damxisa: nurse', { sessionId: small.id, maxTokens: 12 });
  assert.equal(answer.sessionId, small.id);
  assert.equal(answer.mode, 'closed-book');
  const again = await writer.ask('Mivel Damxisa: nurse', { sessionId: small.id, maxTokens: 12 });
  assert.equal(again.text, answer.text);

  const appended = await writer.appendSession(small.id, demonstrations(8, 4));
  assert.ok(appended.chunks > small.chunks);
  assert.equal(appended.stateBytes, small.stateBytes);
  assert.deepEqual((await writer.listSessions()).map((s) => s.id).sort(), [small.id, big.id].sort());

  await writer.deleteSession(big.id);
  await assert.rejects(writer.deleteSession(big.id), NotFound);
  await assert.rejects(writer.createSession(['']), InvalidArgument);

  const reader = client(READER);
  assert.deepEqual((await reader.listSessions()).map((s) => s.id), [small.id]);
  await assert.rejects(reader.createSession(demonstrations(0, 2)), PermissionDenied);
  await assert.rejects(reader.deleteSession(small.id), PermissionDenied);
});
