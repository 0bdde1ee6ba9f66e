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
 *                            which of these the answering primary still holds with its
 *                            shadow on the asking node (orphan check)
 *   PUT  /v1/transfer/<id>   body as a PUT, meta + "shadowPeer" (the copy's current holder),
 *                            "held"                     → 201 {"result":"accepted"|"exists","shadowPeer"}
 *                            drain: the answering node takes the message over as its own
 *                            primary (remaining recipients only), its shadow on a third node,
 *                            both durable before the reply; 503 when it cannot
 *   POST /v1/reshadow        {"ids":[...]}              → 200 {"moved":[ids],"gone":[ids]}
 *                            drain: the asking node holds these shadows of the answering
 *                            primary and is leaving; moved = shadowed elsewhere now, gone =
 *                            the primary no longer holds them
 *
 * Heartbeats (both directions) also carry the sender's `zone` and `draining` (a draining
 * node takes no new copies: placement skips it). A node of an older version ignores them,
 * and answers 404 to transfer and reshadow.
 *
 * The sender's identity is taken from its client certificate, never from the body.
 */
import { Parts, bodyParts, type Body } from '../base/buffers.js';
export interface PutMeta {
  sender: string;
  recipients: string[];
  receivedAt: number;
  incarnation: string;
  /** indexes of recipients already delivered (a copy made again for a partly delivered message) */
  done?: number[];
}

export interface TransferMeta extends PutMeta {
  /** the node that holds the message's shadow copy now (null: none) */
  shadowPeer: string | null;
  held?: boolean;
}

export interface HeartbeatBody {
  name: string;
  incarnation: string;
  /** in an answer: this node's spool refused the last copy for lack of room */
  spoolFull?: boolean;
  /** the sender's failure domain (node.zone) */
  zone?: string;
  /** the sender is draining: it takes no new copies */
  draining?: boolean;
}

export interface DiscardBody {
  ids: string[];
  rcpts?: Array<{ id: string; idx: number[] }>;
}

export const ID_RE = /^[A-Za-z0-9]{8,64}$/;

/** The PUT body as parts to write in turn (the message bytes are not copied). */
export function encodePutParts(meta: PutMeta, raw: Body): Buffer[] {
  const json = JSON.stringify(meta);
  const head = Buffer.allocUnsafe(4 + Buffer.byteLength(json));
  head.writeUInt32BE(head.length - 4, 0);
  head.write(json, 4);
  return [head, ...bodyParts(raw)];
}

export function encodePut(meta: PutMeta, raw: Body): Buffer {
  return Buffer.concat(encodePutParts(meta, raw));
}

export class ProtocolError extends Error {}

/** A PUT body, whole or in the pieces it arrived in; the message bytes come back as views of it (not copied). */
export function decodePut(body: Body): { meta: PutMeta; raw: Body } {
  const buf = body instanceof Parts ? body : new Parts([body]);
  if (buf.length < 4) throw new ProtocolError('body too short');
  const len = buf.slice(0, 4).whole().readUInt32BE(0);
  if (len > buf.length - 4 || len > 1 << 22) throw new ProtocolError('bad meta length');
  let meta: unknown;
  try {
    meta = JSON.parse(buf.slice(4, 4 + len).whole().toString('utf8'));
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
    typeof m.incarnation !== 'string' ||
    (m.done !== undefined && !(Array.isArray(m.done) && m.done.every((i) => Number.isInteger(i) && i >= 0 && i < m.recipients!.length)))
  ) {
    throw new ProtocolError('meta fields missing or of the wrong type');
  }
  const raw = buf.slice(4 + len);
  return { meta: m as PutMeta, raw: body instanceof Parts ? raw : raw.whole() };
}

/** A transfer body: a PUT body whose meta also names the current shadow holder. */
export function decodeTransfer(body: Body): { meta: TransferMeta; raw: Body } {
  const { meta, raw } = decodePut(body);
  const t = meta as Partial<TransferMeta>;
  if (!(t.shadowPeer === null || typeof t.shadowPeer === 'string') || (t.held !== undefined && typeof t.held !== 'boolean')) {
    throw new ProtocolError('transfer meta: shadowPeer must be a name or null');
  }
  return { meta: meta as TransferMeta, raw };
}
