/**
 * The composition root: builds every part of one node from its Config and wires them.
 * smtp → accept (spool + shadow) → 250 → delivery → spool purge → shadow discard.
 * Nothing else constructs parts; tests and the CLI start nodes through here.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config } from './config/index.js';
import { parseHostPort, maxShadowAgeMs } from './config/index.js';
import { Spool } from './spool/index.js';
import { ShadowLink } from './shadow/index.js';
import { SmtpListener } from './smtp/index.js';
import { NetworkList } from './smtp/networks.js';
import { ShadowedAcceptor } from './core/accept.js';
import { DeliveryWorker } from './delivery/index.js';
import { AdminServer, type Readiness } from './ops/admin.js';
import { createLogger } from './ops/log.js';

export interface RelayAddresses {
  smtp: { host: string; port: number };
  shadow: { host: string; port: number };
  admin: { host: string; port: number };
}

export class Relay {
  private stopping: Promise<void> | undefined;

  private constructor(
    readonly config: Config,
    readonly log: Logger,
    readonly spool: Spool,
    readonly shadow: ShadowLink,
    readonly smtp: SmtpListener,
    readonly acceptor: ShadowedAcceptor,
    readonly delivery: DeliveryWorker,
    readonly admin: AdminServer,
    readonly addresses: RelayAddresses,
  ) {}

  static async start(cfg: Config, opts: { log?: Logger } = {}): Promise<Relay> {
    const log = opts.log ?? createLogger(cfg.node.name, cfg.log.level);
    const spool = Spool.open(cfg.node.dataDir, {
      node: cfg.node.name,
      busyTimeoutMs: cfg.spool.busyTimeoutMs,
      maxSizeBytes: cfg.spool.maxSizeBytes,
    });
    const peerNames = cfg.shadow.peers.map((p) => p.name);
    const recovered = spool.recover(peerNames);
    log.info({ spool: spool.file, incarnation: spool.incarnation, ...recovered, ...spool.counts() }, 'spool opened');
    const shadowAge = maxShadowAgeMs(cfg);
    if (shadowAge < cfg.delivery.retry.maxAgeMs) {
      log.warn(
        { maxShadowAgeMs: shadowAge, maxAgeMs: cfg.delivery.retry.maxAgeMs },
        'shadow.maxShadowAgeMs is shorter than delivery.retry.maxAgeMs: a peer drops copies its primary still retries',
      );
    }

    const tls = {
      ca: readFileSync(cfg.shadow.tls.ca),
      cert: readFileSync(cfg.shadow.tls.cert),
      key: readFileSync(cfg.shadow.tls.key),
    };
    // the parts call each other through these late-bound closures (wired below)
    let delivery: DeliveryWorker | undefined;
    let acceptor: ShadowedAcceptor | undefined;
    const shadow = new ShadowLink({
      nodeName: cfg.node.name,
      listen: parseHostPort(cfg.shadow.listen)!,
      peers: cfg.shadow.peers,
      tls,
      timeoutMs: cfg.shadow.timeoutMs,
      heartbeatMs: cfg.shadow.heartbeatMs,
      promoteAfterMs: cfg.shadow.promoteAfterMs,
      maxShadowAgeMs: shadowAge,
      reconcileIntervalMs: cfg.shadow.reconcileIntervalMs,
      maxMessageSize: cfg.smtp.maxMessageSize,
      spool,
      log,
      onPromoted: () => delivery?.wake(),
      onReleased: () => delivery?.wake(),
    });
    delivery = new DeliveryWorker({
      nextHop: cfg.delivery.nextHop,
      concurrency: cfg.delivery.concurrency,
      retry: cfg.delivery.retry,
      hostname: cfg.smtp.hostname,
      spool,
      log,
      onPurged: () => shadow.pumpDiscards(),
      heldPeers: () => shadow.heldPeers(),
      // a bounce is accepted like inbound mail: spooled, shadowed, then queued
      submitBounce: async (b) => {
        await acceptor!.accept(
          { id: b.id, sender: b.sender, recipients: b.recipients, body: b.body, receivedAt: b.receivedAt, client: { address: 'local', helo: cfg.smtp.hostname } },
          { settles: b.settles },
        );
      },
    });
    const worker = delivery;
    acceptor = new ShadowedAcceptor({
      spool,
      replicator: shadow,
      peerNames,
      onFailure: cfg.shadow.onFailure,
      log,
      onAccepted: () => worker.wake(),
    });
    const smtp = new SmtpListener({
      hostname: cfg.smtp.hostname,
      maxMessageSize: cfg.smtp.maxMessageSize,
      maxRecipients: cfg.smtp.maxRecipients,
      socketTimeoutMs: cfg.smtp.socketTimeoutMs,
      allowedNetworks: new NetworkList(cfg.smtp.allowedNetworks),
      tls: cfg.smtp.tls,
      acceptor,
      log,
    });
    let smtpUp = false;
    const admin = new AdminServer({
      readiness: (): Readiness => {
        const reasons: string[] = [];
        if (!smtpUp) reasons.push('smtp listener not up');
        if (!shadow.anyPeerUp() && cfg.shadow.onFailure !== 'accept') reasons.push('no shadow peer reachable');
        return { ready: reasons.length === 0, reasons };
      },
    });

    const shadowAddr = await shadow.start();
    const smtpHp = parseHostPort(cfg.smtp.listen)!;
    const smtpAddr = await smtp.listen(smtpHp.host, smtpHp.port);
    smtpUp = true;
    const adminHp = parseHostPort(cfg.admin.listen)!;
    const adminAddr = await admin.listen(adminHp.host, adminHp.port);
    worker.start();
    const addresses = { smtp: smtpAddr, shadow: shadowAddr, admin: adminAddr };
    log.info({ ...addresses }, 'shadowrelay started');
    return new Relay(cfg, log, spool, shadow, smtp, acceptor, worker, admin, addresses);
  }

  /**
   * Graceful stop, within node.shutdownTimeoutMs (plus shadow.timeoutMs for a message
   * being accepted at the deadline): new clients get 421 4.3.2, transactions in progress
   * finish, deliveries in flight finish, then the link and the spool close. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const deadline = Date.now() + this.config.node.shutdownTimeoutMs;
      this.log.info({ shutdownTimeoutMs: this.config.node.shutdownTimeoutMs }, 'stopping');
      await this.smtp.drain(this.config.node.shutdownTimeoutMs);
      await this.delivery.stop(Math.max(0, deadline - Date.now()));
      await this.shadow.stop();
      await this.admin.close();
      await this.spool.close();
      this.log.info('stopped');
      this.log.flush?.();
    })();
    return this.stopping;
  }
}
