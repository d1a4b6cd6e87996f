// Rewrites README.md's configuration table from src/main/config.ts (run after `npm run build`).
// test/config.test.ts fails when the two differ.
import { readFile, writeFile } from 'node:fs/promises';
import { configTable } from '../dist/src/main/config.js';

const START = '<!-- config-table:start -->';
const END = '<!-- config-table:end -->';
const readme = await readFile(new URL('../README.md', import.meta.url), 'utf8');
const a = readme.indexOf(START);
const b = readme.indexOf(END);
if (a < 0 || b < a) throw new Error('README.md lacks the config-table markers');
const next = readme.slice(0, a + START.length) + '\n' + configTable() + '\n' + readme.slice(b);
await writeFile(new URL('../README.md', import.meta.url), next);
console.log('README.md configuration table updated');
