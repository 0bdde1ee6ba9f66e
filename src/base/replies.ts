/**
 * SMTP reply text with our own enhanced status codes (RFC 3463), and reading them back.
 *
 * smtp-server derives an enhanced code from the numeric code alone (454 → 4.7.0, 554 →
 * 5.6.0, …), which is wrong for most of our refusals (relay denied is 5.7.1, a failed shadow
 * copy 4.4.x). A reply built here carries its code in the text; the SMTP engine
 * (smtp/engine.ts) sends such text as it is instead of prefixing a second code.
 */

const CODE = String.raw`[245]\.\d{1,3}\.\d{1,3}`;
const TEXT_WITH_CODE = new RegExp(`^${CODE} `);
const REPLY_WITH_CODE = new RegExp(String.raw`^\d{3}[ -](${CODE})\b`);

export class SmtpReply extends Error {
  readonly responseCode: number;
  constructor(code: number, enhanced: string, text: string) {
    super(`${enhanced} ${text}`);
    this.responseCode = code;
  }
}

export const reply = (code: number, enhanced: string, text: string) => new SmtpReply(code, enhanced, text);

/** Reply text that already starts with an enhanced status code ("5.7.1 …"). */
export function hasEnhancedCode(text: string): boolean {
  return TEXT_WITH_CODE.test(text);
}

/** The enhanced status code of a server's reply ("250 2.0.0 Ok" → "2.0.0"), if it has one. */
export function enhancedCodeOf(response: string): string | undefined {
  return REPLY_WITH_CODE.exec(response)?.[1];
}

/**
 * No reply at all: the connection is closed after DATA. For the one case where neither 250
 * nor 4xx would be true (the shadow copy's fate is unknown); the client treats it as a
 * failure and retries, as after any connection lost before the reply (RFC 5321 §4.1.1.4).
 */
export class HangUp extends Error {}
