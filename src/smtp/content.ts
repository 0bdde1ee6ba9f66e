/**
 * Streaming checks on message content (DATA), run on what smtp-server hands us (the bytes
 * between `354` and `<CRLF>.<CRLF>`, dot-unstuffed).
 *
 * SMTP smuggling defence. smtp-server ends DATA only at `<CRLF>.<CRLF>`, so a body cannot end
 * early *here*; the danger is a body that a later hop reads differently (`<LF>.<LF>`,
 * `<CR>.<CR>`, … as an end of DATA). So no bare CR or bare LF leaves this filter:
 * - `normalize` (default, like Postfix ≥ 3.9 `smtpd_forbid_bare_newline = normalize`): a bare
 *   LF or a bare CR becomes CRLF. A line that then reads "." is content; the outbound side
 *   dot-stuffs it to "..".
 * - `reject` (Postfix's `reject`): the first bare LF or CR is answered
 *   `521 5.5.2 <host> Error: bare <LF> received` and the client is disconnected.
 * NUL is refused in both modes (`554 5.6.0`): it is never valid in a text message (we offer
 * no BINARYMIME) and C-based next hops truncate at it.
 * It also counts `Received:` headers in the header section (mail-loop detection).
 */

export type BareLineEndings = 'normalize' | 'reject';
export type ContentViolation = 'bare LF' | 'bare CR' | 'NUL' | 'too many hops';

const CR = 0x0d;
const LF = 0x0a;
const CRLF = Buffer.from('\r\n');
const CR_BUF = Buffer.from('\r');
const RECEIVED = 'received:';

export class ContentFilter {
  violation: ContentViolation | null = null;
  receivedHeaders = 0;
  /** bytes this filter has passed on (after normalisation) */
  size = 0;
  private heldCR = false;
  private inHeaders = true;
  /** the first bytes of the current header line (enough to recognise "Received:") */
  private lineHead = '';
  private lineLen = 0;

  constructor(
    private readonly mode: BareLineEndings,
    private readonly maxReceivedHeaders: number,
  ) {}

  /** Processes one chunk; returns the bytes to keep (normalised). Empty once a violation is set. */
  push(input: Buffer): Buffer {
    if (this.violation) return Buffer.alloc(0);
    if (input.indexOf(0) >= 0) return this.fail('NUL');
    let chunk = input;
    if (this.heldCR) {
      chunk = Buffer.concat([CR_BUF, input]);
      this.heldCR = false;
    }
    const out: Buffer[] = [];
    let last = 0; // start of bytes not yet copied to out
    let p = 0;
    let lineStart = 0;
    for (;;) {
      const cr = chunk.indexOf(CR, p);
      const lf = chunk.indexOf(LF, p);
      if (cr < 0 && lf < 0) break;
      let end: number; // index of the line break
      let next: number; // index after it
      if (lf >= 0 && (cr < 0 || lf < cr)) {
        if (this.mode === 'reject') return this.fail('bare LF');
        out.push(chunk.subarray(last, lf), CRLF);
        end = lf;
        next = lf + 1;
        last = next;
      } else if (cr === chunk.length - 1) {
        // cannot tell yet whether an LF follows: hold the CR back for the next chunk
        out.push(chunk.subarray(last, cr));
        last = chunk.length;
        this.heldCR = true;
        this.headerBytes(chunk, lineStart, cr);
        lineStart = chunk.length;
        break;
      } else if (chunk[cr + 1] === LF) {
        end = cr;
        next = cr + 2;
      } else {
        if (this.mode === 'reject') return this.fail('bare CR');
        out.push(chunk.subarray(last, cr), CRLF);
        end = cr;
        next = cr + 1;
        last = next;
      }
      if (this.inHeaders) {
        this.headerBytes(chunk, lineStart, end);
        if (this.endOfLine()) return this.fail('too many hops');
      }
      lineStart = next;
      p = next;
    }
    if (this.inHeaders && lineStart < chunk.length) this.headerBytes(chunk, lineStart, chunk.length);
    if (last < chunk.length) out.push(chunk.subarray(last));
    const kept = out.length === 1 ? out[0]! : Buffer.concat(out);
    this.size += kept.length;
    return kept;
  }

  /** End of DATA: a CR still held back was a bare CR. */
  end(): Buffer {
    if (this.violation || !this.heldCR) return Buffer.alloc(0);
    this.heldCR = false;
    if (this.mode === 'reject') return this.fail('bare CR');
    this.size += 2;
    return CRLF;
  }

  private headerBytes(chunk: Buffer, from: number, to: number): void {
    if (!this.inHeaders || to <= from) return;
    this.lineLen += to - from;
    if (this.lineHead.length < RECEIVED.length) {
      this.lineHead += chunk.toString('latin1', from, Math.min(to, from + RECEIVED.length - this.lineHead.length));
    }
  }

  /** A header line ended; returns true when the hop count went over the limit. */
  private endOfLine(): boolean {
    if (this.lineLen === 0) {
      this.inHeaders = false; // the empty line before the body
    } else if (this.lineHead.toLowerCase() === RECEIVED) {
      this.receivedHeaders++;
    }
    this.lineHead = '';
    this.lineLen = 0;
    return this.receivedHeaders > this.maxReceivedHeaders;
  }

  private fail(v: ContentViolation): Buffer {
    this.violation = v;
    return Buffer.alloc(0);
  }
}
