/**
 * SMTP replies with our own enhanced status codes.
 *
 * smtp-server derives an enhanced code from the numeric code alone (454 → 4.7.0, 554 →
 * 5.6.0, …), which is wrong for most of our refusals (relay denied is 5.7.1, a failed shadow
 * copy 4.4.x). A reply built here carries its code in the text; the patch below makes
 * smtp-server send such text as it is instead of prefixing a second code.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;

type SendFn = (code: number, data: unknown, context?: unknown) => void;
const proto = SMTPConnection.prototype as unknown as { send: SendFn; __shadowrelayPatched?: boolean };
if (!proto.__shadowrelayPatched) {
  const original = proto.send;
  proto.send = function (this: unknown, code: number, data: unknown, context?: unknown) {
    if (typeof data === 'string' && ENHANCED.test(data)) return original.call(this, code, data, false);
    return original.call(this, code, data, context);
  };
  proto.__shadowrelayPatched = true;
}

export class SmtpReply extends Error {
  readonly responseCode: number;
  constructor(code: number, enhanced: string, text: string) {
    super(`${enhanced} ${text}`);
    this.responseCode = code;
  }
}

export const reply = (code: number, enhanced: string, text: string) => new SmtpReply(code, enhanced, text);

/**
 * No reply at all: the connection is closed after DATA. For the one case where neither 250
 * nor 4xx would be true (the shadow copy's fate is unknown); the client treats it as a
 * failure and retries, as after any connection lost before the reply (RFC 5321 §4.1.1.4).
 */
export class HangUp extends Error {}
