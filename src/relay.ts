/**
 * The composition root: builds every part of one node from its Config and wires them.
 * smtp → accept (spool + shadow) → 250 → delivery → spool purge → shadow discard.
 * Nothing else constructs parts; tests and the CLI start nodes through here.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config } from './config/index.js';
import { parseHostPort } from './config/index.js';
import { Spool } from './spool/index.js';
import { ShadowLink } from './shadow/index.js';
import { SmtpListener } from './smtp/index.js';
import { NetworkList } from './smtp/networks.js';
import { ShadowedAcceptor } from './core/accept.js';
import { DeliveryWorker } from './delivery/index.js';
import { AdminServer, type Readiness } from './ops/admin.js';
import { createLogger } from './ops/log.js';
import { secretFileWarnings } from './ops/secrets.js';

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
    for (const w of secretFileWarnings(cfg)) log.warn(w, 'secret file is readable by group or others: chmod 600 it');
    const spool = Spool.open(cfg.node.dataDir, { node: cfg.node.name });
    const recovered = spool.recover();
    log.info({ spool: spool.file, incarnation: spool.incarnation, ...recovered, ...spool.counts() }, 'spool opened');

    const tls = {
      ca: readFileSync(cfg.shadow.tls.ca),
      cert: readFileSync(cfg.shadow.tls.cert),
      key: readFileSync(cfg.shadow.tls.key),
    };
    const shadow = new ShadowLink({
      nodeName: cfg.node.name,
      listen: parseHostPort(cfg.shadow.listen)!,
      peers: cfg.shadow.peers,
      tls,
      timeoutMs: cfg.shadow.timeoutMs,
      heartbeatMs: cfg.shadow.heartbeatMs,
      maxMessageSize: cfg.smtp.maxMessageSize,
      spool,
      log,
    });
    const delivery = new DeliveryWorker({
      nextHop: cfg.delivery.nextHop,
      concurrency: cfg.delivery.concurrency,
      retry: cfg.delivery.retry,
      hostname: cfg.smtp.hostname,
      spool,
      log,
      onPurged: () => shadow.pumpDiscards(),
    });
    const acceptor = new ShadowedAcceptor({
      spool,
      replicator: shadow,
      peerNames: cfg.shadow.peers.map((p) => p.name),
      onFailure: cfg.shadow.onFailure,
      log,
      onAccepted: () => delivery.wake(),
    });
    const smtp = new SmtpListener({
      hostname: cfg.smtp.hostname,
      maxMessageSize: cfg.smtp.maxMessageSize,
      maxRecipients: cfg.smtp.maxRecipients,
      socketTimeoutMs: cfg.smtp.socketTimeoutMs,
      allowedNetworks: new NetworkList(cfg.smtp.allowedNetworks),
      tls: cfg.smtp.tls,
      requireTLS: cfg.smtp.requireTLS,
      relayDomains: cfg.smtp.relayDomains,
      bareLineEndings: cfg.smtp.bareLineEndings,
      auth: cfg.smtp.auth,
      limits: cfg.smtp.limits,
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
    delivery.start();
    const addresses = { smtp: smtpAddr, shadow: shadowAddr, admin: adminAddr };
    log.info({ ...addresses }, 'shadowrelay started');
    return new Relay(cfg, log, spool, shadow, smtp, acceptor, delivery, admin, addresses);
  }

  /** Graceful stop: no new clients, finish in-flight work, close the spool. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('stopping');
      await this.smtp.close();
      await this.delivery.stop();
      await this.shadow.stop();
      await this.admin.close();
      await this.spool.close();
      this.log.info('stopped');
      this.log.flush?.();
    })();
    return this.stopping;
  }
}
