/** The DATA content filter (bare CR/LF, NUL, Received count), fed in arbitrary chunks. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { ContentFilter, type BareLineEndings } from '../../src/smtp/content.js';

const SEED = 4004;

function run(mode: BareLineEndings, parts: Buffer[], maxHops = 1000): { out: Buffer; f: ContentFilter } {
  const f = new ContentFilter(mode, maxHops);
  const out = Buffer.concat([...parts.map((p) => f.push(p)), f.end()]);
  return { out, f };
}

/** splits `b` at the given cut points */
function split(b: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (b.length + 1)))].sort((x, y) => x - y);
  const parts: Buffer[] = [];
  let last = 0;
  for (const p of points) {
    parts.push(b.subarray(last, p));
    last = p;
  }
  parts.push(b.subarray(last));
  return parts;
}

const text = fc
  .array(fc.constantFrom('a', 'b', '.', ':', ' ', '\r', '\n', '\r\n', 'Received: x', '\r\n\r\n'), { maxLength: 60 })
  .map((xs) => Buffer.from(xs.join(''), 'latin1'));
const cuts = fc.array(fc.nat(), { maxLength: 8 });

describe('ContentFilter', () => {
  it(`normalize: any chunking gives CRLF-only output equal to the reference (fast-check seed ${SEED})`, () => {
    fc.assert(
      fc.property(text, cuts, (b, c) => {
        const { out, f } = run('normalize', split(b, c));
        expect(f.violation).toBeNull();
        expect(out.toString('latin1')).toBe(b.toString('latin1').replace(/\r\n|\r|\n/g, '\r\n'));
        expect(f.size).toBe(out.length);
      }),
      { seed: SEED, numRuns: 2000 },
    );
  });

  it(`reject: a violation exactly when there is a bare CR or LF, wherever the chunks break (seed ${SEED})`, () => {
    fc.assert(
      fc.property(text, cuts, (b, c) => {
        const { out, f } = run('reject', split(b, c));
        const bare = /\r(?!\n)|(?<!\r)\n/.test(b.toString('latin1'));
        expect(f.violation !== null).toBe(bare);
        if (!bare) expect(out.equals(b)).toBe(true);
      }),
      { seed: SEED, numRuns: 2000 },
    );
  });

  it('refuses NUL in both modes, and counts Received headers only in the header section', () => {
    expect(run('normalize', [Buffer.from('Subject: a\0b\r\n\r\n')]).f.violation).toBe('NUL');
    expect(run('reject', [Buffer.from('x\r\n'), Buffer.from('\0')]).f.violation).toBe('NUL');
    const msg = Buffer.from('Received: a\r\nreceived: b\r\n\tfolded\r\nRECEIVED:c\r\nSubject: s\r\n\r\nReceived: body\r\n');
    for (let i = 1; i < msg.length; i++) {
      const { f } = run('normalize', [msg.subarray(0, i), msg.subarray(i)]);
      expect(f.receivedHeaders, `split at ${i}`).toBe(3);
    }
    expect(run('normalize', [msg], 2).f.violation).toBe('too many hops');
    expect(run('normalize', [msg], 3).f.violation).toBeNull();
  });
});
