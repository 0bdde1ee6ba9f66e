/**
 * Wire format of the replication link (HTTP/2 over mutual TLS).
 *
 *   PUT  /v1/messages/<id>   body: u32 BE length of the JSON meta, the meta, the raw message
 *                            → 201 {"result":"stored"|"exists"}   (durable before the reply)
 *   POST /v1/discard         {"ids":[...], "rcpts"?:[{"id","idx":[n...]}]}
 *                            → 200 {"purged":n}        (rcpts: recipients the primary finished)
 *   POST /v1/heartbeat       {"name","incarnation"}     → 200 {"name","incarnation","spoolFull"?}
 *                            spoolFull: the answering node's last put failed for lack of room
 *   POST /v1/resolve         {"ids":[...]}              → 200 {"held":[ids]}
 *                            after puts that got no answer: which copies the answering node
 *                            holds; it refuses late copies of the others (409) from then on
 *   POST /v1/reconcile       {"incarnation"}            → 200 {"promoted":[ids]}
 *                            what the answering node promoted from the asking primary
 *   POST /v1/reconcile/done  {"ids":[...]}              → 200 {"forgotten":n}
 *                            the primary dropped those; the records can go
 *   POST /v1/known           {"ids":[...]}              → 200 {"known":[ids]}
 *                            which of these the answering primary still holds (orphan check)
 *
 * The sender's identity is taken from its client certificate, never from the body.
 */
export interface PutMeta {
  sender: string;
  recipients: string[];
  receivedAt: number;
  incarnation: string;
}

export interface HeartbeatBody {
  name: string;
  incarnation: string;
  /** in an answer: this node's spool refused the last copy for lack of room */
  spoolFull?: boolean;
}

export interface DiscardBody {
  ids: string[];
  rcpts?: Array<{ id: string; idx: number[] }>;
}

export const ID_RE = /^[A-Za-z0-9]{8,64}$/;

/** The PUT body as parts to write in turn (the message bytes are not copied). */
export function encodePutParts(meta: PutMeta, raw: Buffer): [Buffer, Buffer] {
  const json = JSON.stringify(meta);
  const head = Buffer.allocUnsafe(4 + Buffer.byteLength(json));
  head.writeUInt32BE(head.length - 4, 0);
  head.write(json, 4);
  return [head, raw];
}

export function encodePut(meta: PutMeta, raw: Buffer): Buffer {
  return Buffer.concat(encodePutParts(meta, raw));
}

export class ProtocolError extends Error {}

export function decodePut(buf: Buffer): { meta: PutMeta; raw: Buffer } {
  if (buf.length < 4) throw new ProtocolError('body too short');
  const len = buf.readUInt32BE(0);
  if (len > buf.length - 4 || len > 1 << 22) throw new ProtocolError('bad meta length');
  let meta: unknown;
  try {
    meta = JSON.parse(buf.subarray(4, 4 + len).toString('utf8'));
  } catch {
    throw new ProtocolError('meta is not JSON');
  }
  const m = meta as Partial<PutMeta>;
  if (
    typeof m !== 'object' ||
    m === null ||
    typeof m.sender !== 'string' ||
    !Array.isArray(m.recipients) ||
    m.recipients.length === 0 ||
    !m.recipients.every((r) => typeof r === 'string') ||
    typeof m.receivedAt !== 'number' ||
    typeof m.incarnation !== 'string'
  ) {
    throw new ProtocolError('meta fields missing or of the wrong type');
  }
  return { meta: m as PutMeta, raw: buf.subarray(4 + len) };
}
