/**
 * A body in pieces (base/buffers.ts) and the link's PUT body read from pieces
 * (shadow/protocol.ts): the same bytes as the whole, wherever the pieces are cut.
 */
import { describe, it, expect } from 'vitest';
import { Parts } from '../../src/base/buffers.js';
import { decodePut, encodePut } from '../../src/shadow/protocol.js';

const cuts = (b: Buffer, i: number, j: number) => new Parts([b.subarray(0, i), b.subarray(i, j), b.subarray(j)]);

describe('body in pieces', () => {
  it('slices, copies and joins to the bytes of the whole', () => {
    const b = Buffer.from('0123456789abcdef');
    for (let i = 0; i <= b.length; i++) {
      for (let j = i; j <= b.length; j++) {
        const p = cuts(b, i, j);
        expect(p.length).toBe(b.length);
        expect(p.whole().equals(b)).toBe(true);
        for (const [from, to] of [[0, 16], [3, 9], [i, j], [j, 16], [5, 5]] as const) {
          expect(p.slice(from, to).whole().toString(), `cut ${i},${j} slice ${from},${to}`).toBe(b.toString('latin1', from, to));
        }
        const target = Buffer.alloc(20, 0x2d);
        p.copyTo(target, 2);
        expect(target.toString()).toBe(`--${b.toString()}--`);
      }
    }
  });

  it('a PUT body cut anywhere (inside its length, its meta or the message) decodes to the same meta and message', () => {
    const meta = { sender: 's@x.test', recipients: ['r@x.test'], receivedAt: 1, incarnation: 'inc' };
    const wire = encodePut(meta, Buffer.from('Subject: x\r\n\r\nbody\r\n'));
    for (let i = 0; i <= wire.length; i += 3) {
      for (let j = i; j <= wire.length; j += 5) {
        const { meta: m, raw } = decodePut(cuts(wire, i, j));
        expect(m).toEqual(meta);
        expect(raw).toBeInstanceOf(Parts);
        expect((raw as Parts).whole().toString()).toBe('Subject: x\r\n\r\nbody\r\n');
      }
    }
    expect(() => decodePut(new Parts([wire.subarray(0, 3)]))).toThrow('body too short');
  });
});
