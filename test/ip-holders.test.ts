// The IP-holder index (src/p2p/ip-holders.ts) against a scan of the whole answer: for answers of
// every size the index splits differently (empty, one entry, below and above its leaf size, a
// cluster's worth, IPv4 and IPv6 mixed), random keys and counts from 1 to more than the answer
// holds, the same IPs in the same order, also when some are passed over.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { IpHolderIndex, ipPosition, kadIdOf, nearestIps } from '../src/p2p/ip-holders.js';

function answerOf(size: number, v6Every = 0): string[] {
  return Array.from({ length: size }, (_, i) => (v6Every > 0 && i % v6Every === 0 ? `fd00::${i.toString(16)}` : `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`));
}

describe('IP holders by index', () => {
  const cases: Array<{ name: string; answer: string[]; counts: number[]; keys: number }> = [
    { name: 'empty answer', answer: [], counts: [1, 6], keys: 5 },
    { name: 'one IP', answer: answerOf(1), counts: [1, 6], keys: 20 },
    { name: 'below the leaf size', answer: answerOf(7), counts: [1, 6, 7, 9], keys: 50 },
    { name: 'just above it', answer: answerOf(9), counts: [1, 6, 9, 10], keys: 50 },
    { name: '100, IPv6 mixed in', answer: answerOf(100, 3), counts: [1, 3, 6, 20, 100, 120], keys: 200 },
    { name: '1,000', answer: answerOf(1000), counts: [1, 6, 21], keys: 300 },
    { name: '5,000', answer: answerOf(5000, 7), counts: [1, 6], keys: 40 },
  ];
  for (const c of cases) {
    test(`${c.name}: the same holders, in the same order, as a scan`, () => {
      const index = new IpHolderIndex(c.answer);
      assert.equal(index.size, c.answer.length);
      assert.equal(index.answer, c.answer);
      for (let k = 0; k < c.keys; k++) {
        const target = kadIdOf(randomBytes(34));
        for (const count of c.counts) {
          const want = nearestIps(target, c.answer, count);
          assert.deepEqual(index.nearest(target, count), want, `key ${k}, count ${count}`);
        }
      }
    });
  }

  test('passed-over IPs are skipped and the next nearest take their place', () => {
    const answer = answerOf(300, 5);
    const index = new IpHolderIndex(answer);
    for (let k = 0; k < 100; k++) {
      const target = kadIdOf(randomBytes(34));
      // A different third of the answer passed over each time (dead members, our own address).
      const skipped = new Set(answer.filter((_, i) => (i + k) % 3 === 0));
      const want = nearestIps(target, answer.filter((ip) => !skipped.has(ip)), 6);
      assert.deepEqual(index.nearest(target, 6, (ip) => skipped.has(ip)), want);
    }
    assert.deepEqual(index.nearest(kadIdOf(randomBytes(34)), 6, () => true), [], 'everything passed over');
  });

  test('a key at the position of an IP has that IP first', () => {
    const answer = answerOf(500);
    const index = new IpHolderIndex(answer);
    for (const ip of [answer[0], answer[123], answer[499]]) assert.equal(index.nearest(ipPosition(ip), 1)[0], ip);
  });

  test('positions that share their first four bytes (which the sort packs into a number) keep their order', () => {
    // Real positions tie there about once in 10,000 answers of 1,000; here half of them do.
    const answer = answerOf(400);
    const tied = (ip: string) => {
      const id = Buffer.from(ipPosition(ip));
      if (id[31] & 1) id.fill(0x5a, 0, 4);
      return id;
    };
    const index = new IpHolderIndex(answer, tied);
    for (let k = 0; k < 100; k++) {
      const target = kadIdOf(randomBytes(34));
      if (k % 2) target.fill(0x5a, 0, 4); // keys inside the tied range too
      assert.deepEqual(index.nearest(target, 6), nearestIps(target, answer, 6, tied), `key ${k}`);
    }
  });

  test('a count of 0 asks for nobody', () => {
    assert.deepEqual(new IpHolderIndex(answerOf(50)).nearest(kadIdOf(randomBytes(34)), 0), []);
  });
});
