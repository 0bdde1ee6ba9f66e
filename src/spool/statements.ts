/**
 * The statements the parts run, prepared once per connection after the schema exists (the
 * migration and `meta` SQL stay in schema.ts).
 */
import type Database from 'better-sqlite3';

export type Statements = ReturnType<typeof prepareStatements>;

export function prepareStatements(db: Database.Database) {
  return {
    insertMsg: db.prepare(
      `INSERT INTO messages(id,role,state,origin,origin_incarnation,sender,size,received_at,next_attempt_at,client,shadow_peer)
       VALUES(@id,@role,@state,@origin,@originIncarnation,@sender,@size,@receivedAt,@nextAttemptAt,@client,@shadowPeer)`,
    ),
    /** after its messages row (the foreign key); deleting the row deletes the body (ON DELETE CASCADE) */
    insertBody: db.prepare(`INSERT INTO bodies(id,body) VALUES(?,?)`),
    // a large body's file (files.ts); deleting the row enters the file in gone_files (a trigger)
    insertBodyFile: db.prepare(`INSERT INTO body_files(id,name,size) VALUES(?,?,?)`),
    getBodyFile: db.prepare(`SELECT name FROM body_files WHERE id=?`),
    bodyFileNames: db.prepare(`SELECT name, size FROM body_files`),
    bodyFileBytes: db.prepare(`SELECT COALESCE(SUM(size),0) AS n FROM body_files`),
    goneFiles: db.prepare(`SELECT name, size FROM gone_files LIMIT 1000`),
    goneFileDel: db.prepare(`DELETE FROM gone_files WHERE name=?`),
    goneFilesClear: db.prepare(`DELETE FROM gone_files`),
    insertRcpt: db.prepare(`INSERT INTO recipients(message_id,idx,address) VALUES(?,?,?)`),
    exists: db.prepare(`SELECT role, origin FROM messages WHERE id=?`),
    setState: db.prepare(`UPDATE messages SET state=?, shadow_peer=? WHERE id=? AND role='primary'`),
    deleteMsg: db.prepare(`DELETE FROM messages WHERE id=?`),
    queueSpooled: db.prepare(`UPDATE messages SET state='queued', shadow_peer=? WHERE id=? AND role='primary' AND state='spooled'`),
    deleteSpooled: db.prepare(`DELETE FROM messages WHERE id=? AND role='primary' AND state='spooled'`),
    deleteShadow: db.prepare(`DELETE FROM messages WHERE id=? AND role='shadow' AND origin=?`),
    rcptUpdate: db.prepare(`UPDATE recipients SET state=?, last_error=? WHERE message_id=? AND idx=? AND state='pending'`),
    rcptError: db.prepare(`UPDATE recipients SET last_error=? WHERE message_id=? AND idx=?`),
    rcptPending: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state='pending'`),
    afterAttempt: db.prepare(
      `UPDATE messages SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?`,
    ),
    getMsg: db.prepare(
      `SELECT id,role,state,origin,sender,size,received_at,next_attempt_at,attempts,last_error,shadow_peer FROM messages WHERE id=?`,
    ),
    getBody: db.prepare(`SELECT body FROM bodies WHERE id=?`),
    getRcpts: db.prepare(`SELECT idx,address,state,last_error,reported FROM recipients WHERE message_id=? ORDER BY idx`),
    // held: peers a primary must reconcile with before delivering what it shadowed there
    due: db.prepare(
      `SELECT id FROM messages WHERE role='primary' AND state='queued' AND next_attempt_at<=?
         AND (shadow_peer IS NULL OR shadow_peer NOT IN (SELECT value FROM json_each(?)))
       ORDER BY next_attempt_at LIMIT ?`,
    ),
    nextDue: db.prepare(
      `SELECT MIN(next_attempt_at) AS t FROM messages WHERE role='primary' AND state='queued'
         AND (shadow_peer IS NULL OR shadow_peer NOT IN (SELECT value FROM json_each(?)))`,
    ),
    rcptUnreported: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state='failed' AND reported=0`),
    rcptReport: db.prepare(`UPDATE recipients SET reported=1 WHERE message_id=? AND idx=? AND state='failed' AND reported=0`),
    rcptDoneByOrigin: db.prepare(
      `UPDATE recipients SET state='delivered', last_error=? WHERE message_id=? AND idx=? AND state='pending'`,
    ),
    rcptState: db.prepare(`SELECT state FROM recipients WHERE message_id=? AND idx=?`),
    rcptNotPending: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id=? AND state<>'pending'`),
    setNextAttempt: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE id=?`),
    outboxRcptAdd: db.prepare(
      `INSERT INTO outbox_rcpt(peer,message_id,idx,created_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING`,
    ),
    outboxRcptList: db.prepare(`SELECT message_id, idx FROM outbox_rcpt WHERE peer=? ORDER BY created_at, message_id, idx LIMIT ?`),
    outboxRcptDel: db.prepare(`DELETE FROM outbox_rcpt WHERE peer=? AND message_id=? AND idx=?`),
    outboxRcptDelMsg: db.prepare(`DELETE FROM outbox_rcpt WHERE peer=? AND message_id=?`),
    outboxRcptCount: db.prepare(`SELECT COUNT(*) AS n FROM outbox_rcpt`),
    shadowsOf: db.prepare(`SELECT id, origin_incarnation FROM messages WHERE role='shadow' AND origin=?`),
    hasShadowsOf: db.prepare(`SELECT 1 AS x FROM messages WHERE role='shadow' AND origin=? LIMIT 1`),
    shadowIncarnations: db.prepare(
      `SELECT DISTINCT origin_incarnation AS inc FROM messages WHERE role='shadow' AND origin=?`,
    ),
    promote: db.prepare(
      `UPDATE messages SET role='primary', state='queued', next_attempt_at=?, shadow_peer=NULL WHERE id=? AND role='shadow'`,
    ),
    promotedAdd: db.prepare(
      `INSERT INTO promoted(origin,origin_incarnation,message_id,promoted_at) VALUES(?,?,?,?) ON CONFLICT DO NOTHING`,
    ),
    promotedGet: db.prepare(`SELECT 1 AS x FROM promoted WHERE origin=? AND message_id=?`),
    promotedDel: db.prepare(`DELETE FROM promoted WHERE origin=? AND message_id=?`),
    promotedFor: db.prepare(`SELECT message_id FROM promoted WHERE origin=? AND origin_incarnation=? ORDER BY promoted_at`),
    promotedDropStale: db.prepare(`DELETE FROM promoted WHERE origin=? AND origin_incarnation<>?`),
    promotedPrune: db.prepare(`DELETE FROM promoted WHERE promoted_at<?`),
    dropOwnPromoted: db.prepare(
      `DELETE FROM messages WHERE id=? AND role='primary' AND origin=? AND (shadow_peer=? OR state='spooled') AND state IN ('queued','held','spooled')`,
    ),
    knownPrimary: db.prepare(`SELECT 1 AS x FROM messages WHERE id=? AND role='primary' AND origin=?`),
    // the orphan check of a holder: a copy is known when its primary says the holder is its
    // shadow (or the primary is still waiting for its confirmation)
    knownPrimaryFor: db.prepare(
      `SELECT 1 AS x FROM messages WHERE id=? AND role='primary' AND origin=? AND (state='spooled' OR shadow_peer=?)`,
    ),
    shadowOrigins: db.prepare(`SELECT DISTINCT origin FROM messages WHERE role='shadow'`),
    // drain: what this node must hand over (primaries) and have re-homed (shadows)
    drainPrimaries: db.prepare(`SELECT id FROM messages WHERE role='primary' AND state IN ('queued','held') ORDER BY received_at LIMIT ?`),
    drainShadows: db.prepare(`SELECT id FROM messages WHERE role='shadow' AND origin=? ORDER BY received_at LIMIT ?`),
    setShadowPeer: db.prepare(`UPDATE messages SET shadow_peer=? WHERE id=? AND role='primary' AND origin=? AND shadow_peer=?`),
    insertTransferred: db.prepare(
      `INSERT INTO messages(id,role,state,origin,origin_incarnation,sender,size,received_at,next_attempt_at,client,shadow_peer)
       VALUES(@id,'primary',@state,@origin,@originIncarnation,@sender,@size,@receivedAt,@nextAttemptAt,NULL,@shadowPeer)`,
    ),
    shadowsToVerify: db.prepare(
      `SELECT id, received_at FROM messages
        WHERE role='shadow' AND origin=? AND origin_incarnation=? AND received_at<? AND (received_at, id) > (?, ?)
        ORDER BY received_at, id LIMIT ?`,
    ),
    oldShadows: db.prepare(
      `SELECT id, origin_incarnation, received_at FROM messages WHERE role='shadow' AND origin=? AND received_at<? ORDER BY received_at LIMIT ?`,
    ),
    all: db.prepare(
      `SELECT id,role,state,origin,sender,size,received_at,next_attempt_at,attempts,last_error,shadow_peer FROM messages ORDER BY received_at`,
    ),
    outboxAdd: db.prepare(
      `INSERT INTO outbox(peer,message_id,created_at) VALUES(?,?,?) ON CONFLICT(peer,message_id) DO NOTHING`,
    ),
    outboxList: db.prepare(`SELECT message_id FROM outbox WHERE peer=? ORDER BY created_at LIMIT ?`),
    outboxDel: db.prepare(`DELETE FROM outbox WHERE peer=? AND message_id=?`),
    outboxCount: db.prepare(`SELECT COUNT(*) AS n FROM outbox`),
    spooledIds: db.prepare(`SELECT id FROM messages WHERE role='primary' AND state='spooled'`),
    // operator actions (queue tools)
    hold: db.prepare(`UPDATE messages SET state='held' WHERE id=? AND role='primary' AND state='queued'`),
    release: db.prepare(`UPDATE messages SET state='queued', next_attempt_at=? WHERE id=? AND role='primary' AND state='held'`),
    retryNow: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE id=? AND role='primary' AND state='queued'`),
    retryAllNow: db.prepare(`UPDATE messages SET next_attempt_at=? WHERE role='primary' AND state='queued' AND next_attempt_at>?`),
    rcptFailPending: db.prepare(`UPDATE recipients SET state='failed', last_error=? WHERE message_id=? AND state='pending'`),
    requeueNow: db.prepare(`UPDATE messages SET state='queued', next_attempt_at=? WHERE id=? AND role='primary' AND state IN ('queued','held')`),
    deferredIds: db.prepare(
      `SELECT id FROM messages WHERE role='primary' AND state IN ('queued','held') AND attempts>0 AND last_error IS NOT NULL ORDER BY received_at`,
    ),
    getDetail: db.prepare(`SELECT client, origin_incarnation FROM messages WHERE id=?`),
    stats: db.prepare(
      `SELECT role, state, COUNT(*) AS n, MIN(received_at) AS oldest FROM messages GROUP BY role, state`,
    ),
    counts: db.prepare(`SELECT role, COUNT(*) AS n FROM messages GROUP BY role`),
  };
}
