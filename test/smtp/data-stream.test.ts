/**
 * The DATA scan (smtp/data-stream.ts) against smtp-server's own: the same inputs, cut into the
 * same random chunks, must give the same commands, the same message bodies (escape dots
 * removed, ended only at <CRLF>.<CRLF>) and the same byte counts. The inputs are made of the
 * pieces that matter: dots, CR, LF, CRLF, ".." and "." lines, text.
 */
import { describe, it, expect } from 'vitest';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { FastDataStream } from '../../src/smtp/data-stream.js';
import { seeded } from '../helpers/load.js';

interface Trace {
  events: string[];
}

/** Feeds `chunks` to a parser that enters data mode on each DATA command; resolves with what it saw. */
function run(make: () => SMTPStream, chunks: Buffer[]): Promise<Trace> {
  const parser = make();
  const events: string[] = [];
  parser.oncommand = (cmd, next) => {
    const line = cmd.toString('latin1');
    events.push(`cmd ${JSON.stringify(line)}`);
    if (line.toUpperCase() === 'DATA') {
      const stream = parser.startDataMode();
      const parts: Buffer[] = [];
      stream.on('data', (d: Buffer) => parts.push(d));
      stream.on('end', () => {
        events.push(`data ${JSON.stringify(Buffer.concat(parts).toString('latin1'))} bytes ${stream.byteLength}`);
        parser.continue();
      });
    }
    next?.();
  };
  return new Promise((resolve, reject) => {
    parser.on('error', reject);
    parser.on('finish', () => setImmediate(() => resolve({ events })));
    const write = (i: number): void => {
      if (i === chunks.length) return void parser.end();
      parser.write(chunks[i], () => write(i + 1));
    };
    write(0);
  });
}

/** smtp-server's parser with only our continue() (the fix), so that the comparison is of the scan alone. */
class Reference extends SMTPStream {
  override continue(): void {
    FastDataStream.prototype.continue.call(this);
  }
}

const PIECES = ['\r\n', '\r\n.', '\r\n..', '\r\n.\r\n', '\n', '\r', '.', '..', 'x', 'hello world', '\n.', '.\r\n', '\r\n.x', 'DATA\r\n', 'NOOP\r\n'];

function randomInput(rnd: () => number): Buffer {
  let s = 'DATA\r\n';
  const n = 1 + Math.floor(rnd() * 40);
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(rnd() * PIECES.length)];
  // usually a proper end, then a pipelined command (and sometimes a second message)
  if (rnd() < 0.8) s += '\r\n.\r\nNOOP\r\n';
  if (rnd() < 0.3) s += 'DATA\r\n..\r\n.\r\n';
  return Buffer.from(s, 'latin1');
}

function randomChunks(buf: Buffer, rnd: () => number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length; ) {
    const n = 1 + Math.floor(rnd() * (rnd() < 0.5 ? 4 : 24));
    out.push(buf.subarray(at, at + n));
    at += n;
  }
  return out;
}

describe('DATA scan', () => {
  it('gives smtp-server’s commands, bodies and byte counts for 3000 random inputs in random chunks', async () => {
    const seed = Date.now() % 1_000_000;
    const rnd = seeded(seed);
    for (let k = 0; k < 3000; k++) {
      const input = randomInput(rnd);
      const chunks = randomChunks(input, rnd);
      const want = await run(() => new Reference(), chunks);
      const got = await run(() => new FastDataStream(), chunks);
      expect(got.events, `seed ${seed}, input ${k}: ${JSON.stringify(input.toString('latin1'))}`).toEqual(want.events);
    }
  });

  it('a 1 MB body with dot lines in 64 KB chunks: the same body as smtp-server’s', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 13000; i++) lines.push(i % 97 === 0 ? '..dot line' : i % 89 === 0 ? '.' + 'y'.repeat(70) : 'x'.repeat(76));
    const input = Buffer.from(`DATA\r\n${lines.join('\r\n')}\r\n.\r\nQUIT\r\n`, 'latin1');
    const chunks: Buffer[] = [];
    for (let at = 0; at < input.length; at += 65536) chunks.push(input.subarray(at, at + 65536));
    const want = await run(() => new Reference(), chunks);
    const got = await run(() => new FastDataStream(), chunks);
    expect(got.events).toEqual(want.events);
    expect(got.events.at(-1)).toBe('cmd "QUIT"');
  });

  it('a second whole message in what follows the first one’s dot: both end, and the commands after them are read', async () => {
    // the second message ends inside the first one's continuation (smtp-server lost it there)
    const chunks = [Buffer.from('DATA\r\nfirst\r\n.\r\nNOOP\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n')];
    const got = await run(() => new FastDataStream(), chunks);
    expect(got.events).toEqual(['cmd "DATA"', 'data "first\\r\\n" bytes 7', 'cmd "NOOP"', 'cmd "DATA"', 'data "second\\r\\n" bytes 8', 'cmd "QUIT"']);
  });
});
