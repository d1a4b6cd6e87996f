// README's two commands are what a newcomer runs and what CI runs: keep them wired to the repo.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from './support/peerpull.js';

/** The first ```sh block after `heading` in README. */
function commandAfter(readme: string, heading: string): string {
  const at = readme.indexOf(heading);
  assert.ok(at >= 0, `README mentions "${heading}"`);
  const m = /```sh\n([^`]+)```/.exec(readme.slice(at));
  assert.ok(m, `a sh block follows "${heading}"`);
  return m[1]!.trim();
}

test('.ci/run runs exactly the README test command', async () => {
  const readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const command = commandAfter(readme, 'Run the whole test suite');
  const ci = await readFile(path.join(REPO_ROOT, '.ci/run'), 'utf8');
  const lines = ci.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#') && !l.startsWith('set ') && !l.startsWith('cd '));
  assert.deepEqual(lines, [command]);
});

test('the README main-job command uses npm scripts that exist', async () => {
  const readme = await readFile(path.join(REPO_ROOT, 'README.md'), 'utf8');
  const command = commandAfter(readme, 'Run the main job');
  const pkg = JSON.parse(await readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
  for (const m of command.matchAll(/npm run (\S+)/g)) assert.ok(pkg.scripts[m[1]!], `npm script ${m[1]} exists`);
  assert.match(command, /^npm ci && /, 'installs first, as a fresh clone needs');
});
