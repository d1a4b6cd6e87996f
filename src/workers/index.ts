// The pool's entry module: every Piscina task, selected by name (`pool.run(task, { name })`).
export { readBlob, readSmall } from './blob.js';
export { fetchBlob, fetchManifest } from './peer-fetch.js';
