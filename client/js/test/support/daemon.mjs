// The real `knowd serve` on free loopback ports for the JavaScript tests: a fresh data directory
// and a tokens file with an admin, a team-a reader and a team-a writer. ctest
// (tests/js/CMakeLists.txt) sets KNOWD_BINARY, KNOWD_MODEL and KNOWD_WORLD.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (ctest sets it: tests/js/CMakeLists.txt)`);
  return value;
};

export const ADMIN = 'admin-token';
export const READER = 'team-a-reader';
export const WRITER = 'team-a-writer';

const readJsonl = (file) =>
  fs
    .readFileSync(path.join(env('KNOWD_WORLD'), file), 'utf8')
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line));
export const worldPassages = () => readJsonl('passages.jsonl');
export const worldQuestions = () => readJsonl('questions.jsonl');

export class Daemon {
  // Starts the daemon; resolves once it prints where it listens (d.grpc, d.http: HOST:PORT).
  static async start(extraArgs = []) {
    const d = new Daemon();
    d.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'knowd-js-'));
    const tokens = path.join(d.dir, 'tokens.json');
    fs.writeFileSync(
      tokens,
      JSON.stringify([
        { token: ADMIN, namespaces: ['*'], roles: ['admin'] },
        { token: READER, namespaces: ['team-a'], roles: ['read'] },
        { token: WRITER, namespaces: ['team-a'], roles: ['read', 'write'] },
      ]),
    );
    const args = [
      'serve', '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0',
      '--model', env('KNOWD_MODEL'), '--data-dir', path.join(d.dir, 'data'),
      '--tokens-file', tokens, ...extraArgs,
    ];
    await new Promise((resolve, reject) => {
      d.child = spawn(env('KNOWD_BINARY'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
      d.log = '';
      d.child.stderr.on('data', (chunk) => (d.log += chunk));
      const timer = setTimeout(() => reject(new Error(`knowd did not start:\n${d.log}`)), 120000);
      d.child.on('exit', (code) => reject(new Error(`knowd exited ${code}:\n${d.log}`)));
      readline.createInterface({ input: d.child.stdout }).on('line', (line) => {
        const m = line.match(/^knowd: listening on (\S+) \(grpc\), (\S+) \(http\)/);
        if (m) {
          clearTimeout(timer);
          [, d.grpc, d.http] = m;
          resolve();
        }
      });
    });
    return d;
  }

  // One REST call (docs/http-api.md): resolves to {status, json}.
  async rest(method, urlPath, body, token = ADMIN) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const res = await fetch(`http://${this.http}${urlPath}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, json: await res.json() };
  }

  // SIGTERM; the daemon must exit 0 after its drain.
  async stop() {
    if (this.child && this.child.exitCode === null) {
      this.child.removeAllListeners('exit');
      const exited = new Promise((resolve) => this.child.on('exit', resolve));
      this.child.kill('SIGTERM');
      assert.equal(await exited, 0, `knowd serve exits 0 after SIGTERM:\n${this.log}`);
    }
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
