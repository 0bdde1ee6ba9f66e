/**
 * The composition root: builds every part of one node from its Config and wires them.
 * smtp → accept (spool + shadow) → 250 → delivery → spool purge → shadow discard.
 * Ops: one Metrics registry per node handed to the parts; the admin endpoint serves it, the
 * probes and the queue API; reload(cfg) drives each part's live-changeable settings.
 * Nothing else constructs parts; tests and the CLI start nodes through here.
 */
import type { Logger } from 'pino';
import type { Config } from './config/index.js';
import { parseHostPort, adminToken, loadConfig, ConfigError, maxShadowAgeMs } from './config/index.js';
import type { Spool } from './spool/index.js';
import { ThreadedSpool } from './spool/thread.js';
import { ShadowLink } from './shadow/index.js';
import { SmtpListener } from './smtp/index.js';
import { NetworkList } from './smtp/networks.js';
import { ShadowedAcceptor } from './core/accept.js';
import { DeliveryWorker } from './delivery/index.js';
import { AdminServer, type Readiness } from './ops/admin.js';
import { createLogger } from './ops/log.js';
import { secretFileWarnings } from './ops/secrets.js';
import { Metrics } from './ops/metrics.js';
import { QueueService } from './ops/queue.js';
import { restartOnlyChanges, loadTlsMaterial } from './ops/reload.js';

export interface RelayAddresses {
  smtp: { host: string; port: number };
  shadow: { host: string; port: number };
  admin: { host: string; port: number };
}

export type ReloadResult = { ok: true; changed: string[] } | { ok: false; reason: string };

export class Relay {
  private stopping: Promise<void> | undefined;
  private current: Config;
  private token: string | undefined;

  private constructor(
    config: Config,
    readonly log: Logger,
    readonly spool: Spool,
    readonly shadow: ShadowLink,
    readonly smtp: SmtpListener,
    readonly acceptor: ShadowedAcceptor,
    readonly delivery: DeliveryWorker,
    readonly admin: AdminServer,
    readonly addresses: RelayAddresses,
    readonly metrics: Metrics,
    readonly queue: QueueService,
  ) {
    this.current = config;
    this.token = adminToken(config);
  }

  /** The configuration in force (changes on a successful reload). */
  get config(): Config {
    return this.current;
  }

  static async start(cfg: Config, opts: { log?: Logger } = {}): Promise<Relay> {
    const log = opts.log ?? createLogger(cfg.node.name, cfg.log.level, undefined, cfg.log.format);
    for (const w of secretFileWarnings(cfg)) log.warn(w, 'secret file is readable by group or others: chmod 600 it');
    const peerNames = cfg.shadow.peers.map((p) => p.name);
    // writes run on the spool's own thread (spool/thread.ts): fsyncs never stall the loop;
    // recovery runs there when it opens the spool
    const spool = await ThreadedSpool.openThreaded(
      cfg.node.dataDir,
      { node: cfg.node.name, busyTimeoutMs: cfg.spool.busyTimeoutMs, maxSizeBytes: cfg.spool.maxSizeBytes },
      { recoverPeers: peerNames, onFatal: (err) => log.error({ err: err.message }, 'spool writer thread stopped: every write fails until restart') },
    );
    const recovered = spool.recover(peerNames);
    log.info({ spool: spool.file, incarnation: spool.incarnation, ...recovered, ...spool.counts() }, 'spool opened');
    const shadowAge = maxShadowAgeMs(cfg);
    if (shadowAge < cfg.delivery.retry.maxAgeMs) {
      log.warn(
        { maxShadowAgeMs: shadowAge, maxAgeMs: cfg.delivery.retry.maxAgeMs },
        'shadow.maxShadowAgeMs is shorter than delivery.retry.maxAgeMs: a peer drops copies its primary still retries',
      );
    }

    const tls = loadTlsMaterial(cfg).shadow;
    // the late-bound link lets the registry read peer state that exists only once built
    let link: ShadowLink | undefined;
    const metrics = new Metrics(cfg.node.name, {
      queueStats: () => spool.queueStats(),
      peers: () => link?.peers() ?? [],
      discardsPending: () => spool.discardsPending(),
      spoolBytes: () => spool.diskBytes(),
    });
    // the parts call each other through these late-bound closures (wired below)
    let worker: DeliveryWorker | undefined;
    let acceptorRef: ShadowedAcceptor | undefined;
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
      metrics,
      onPromoted: () => worker?.wake(),
      onReleased: () => worker?.wake(),
    });
    link = shadow;
    const delivery = new DeliveryWorker({
      nextHop: cfg.delivery.nextHop,
      concurrency: cfg.delivery.concurrency,
      retry: cfg.delivery.retry,
      timeouts: cfg.delivery.timeouts,
      hostname: cfg.smtp.hostname,
      spool,
      log,
      onPurged: () => shadow.pumpDiscards(),
      heldPeers: () => shadow.heldPeers(),
      // a bounce is accepted like inbound mail: spooled, shadowed, then queued
      submitBounce: async (b) => {
        await acceptorRef!.accept(
          {
            id: b.id,
            sender: b.sender,
            recipients: b.recipients,
            body: b.body,
            receivedAt: b.receivedAt,
            client: { address: 'local', helo: delivery.hostname },
          },
          { settles: b.settles },
        );
      },
      metrics,
    });
    worker = delivery;
    const acceptor = new ShadowedAcceptor({
      spool,
      replicator: shadow,
      peerNames,
      onFailure: cfg.shadow.onFailure,
      log,
      onAccepted: () => delivery.wake(),
      metrics,
    });
    acceptorRef = acceptor;
    const smtp = new SmtpListener({
      hostname: cfg.smtp.hostname,
      maxMessageSize: cfg.smtp.maxMessageSize,
      maxRecipients: cfg.smtp.maxRecipients,
      maxBytesInFlight: cfg.smtp.maxBytesInFlight,
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
      metrics,
    });
    const queue = new QueueService({ spool, log, wake: () => delivery.wake(), pumpDiscards: () => shadow.pumpDiscards() });
    let smtpUp = false;
    let relay: Relay | undefined;
    const admin = new AdminServer({
      readiness: (): Readiness => {
        const reasons: string[] = [];
        if (!smtpUp) reasons.push('smtp listener not up');
        const onFailure = relay?.config.shadow.onFailure ?? cfg.shadow.onFailure;
        // a node that would answer 451 to every message is not ready: a load balancer or
        // Kubernetes sends the mail elsewhere
        if (!shadow.canShadow() && onFailure !== 'accept') {
          const why = shadow.peers().map((p) => `${p.name} ${p.link}${p.spoolFull ? ' (its spool is full)' : p.lastError ? ` (${p.lastError})` : ''}`);
          reasons.push(`no shadow peer can take a copy: ${why.join(', ')}`);
        }
        return { ready: reasons.length === 0, reasons };
      },
      metrics: () => metrics.render(),
      queue,
      token: () => relay?.token ?? adminToken(cfg),
      log,
    });

    const shadowAddr = await shadow.start();
    const smtpHp = parseHostPort(cfg.smtp.listen)!;
    const smtpAddr = await smtp.listen(smtpHp.host, smtpHp.port);
    smtpUp = true;
    const adminHp = parseHostPort(cfg.admin.listen)!;
    const adminAddr = await admin.listen(adminHp.host, adminHp.port);
    delivery.start();
    const addresses = { smtp: smtpAddr, shadow: shadowAddr, admin: adminAddr };
    relay = new Relay(cfg, log, spool, shadow, smtp, acceptor, delivery, admin, addresses, metrics, queue);
    log.info({ ...addresses }, 'shadowrelay started');
    return relay;
  }

  /**
   * Applies a new configuration to a running node, all or nothing (see ops/reload.ts): a
   * refused reload logs the reason and leaves the running configuration untouched.
   */
  reload(next: Config): ReloadResult {
    const refuse = (reason: string): ReloadResult => {
      this.log.error({ file: next.file, reason }, 'reload refused; the running configuration stays');
      this.metrics.reload(false);
      return { ok: false, reason };
    };
    const restart = restartOnlyChanges(this.current, next);
    if (restart.length) return refuse(`${restart.join(', ')} changed: needs a restart`);
    let material;
    try {
      material = loadTlsMaterial(next);
    } catch (e) {
      return refuse((e as Error).message);
    }
    const changed = (['smtp', 'shadow', 'delivery', 'admin', 'log'] as const).filter(
      (k) => JSON.stringify(this.current[k]) !== JSON.stringify(next[k]),
    );
    // certificates may change on disk under the same file names: always re-apply them
    this.shadow.reload({ tls: material.shadow, timeoutMs: next.shadow.timeoutMs });
    this.acceptor.setOnFailure(next.shadow.onFailure);
    this.smtp.reload({
      hostname: next.smtp.hostname,
      maxMessageSize: next.smtp.maxMessageSize,
      maxRecipients: next.smtp.maxRecipients,
      socketTimeoutMs: next.smtp.socketTimeoutMs,
      allowedNetworks: new NetworkList(next.smtp.allowedNetworks),
      tls: next.smtp.tls,
      requireTLS: next.smtp.requireTLS,
      relayDomains: next.smtp.relayDomains,
      bareLineEndings: next.smtp.bareLineEndings,
      auth: next.smtp.auth,
      limits: next.smtp.limits,
    });
    if (JSON.stringify(this.current.delivery) !== JSON.stringify(next.delivery) || this.current.smtp.hostname !== next.smtp.hostname) {
      this.delivery.reload({ ...next.delivery, hostname: next.smtp.hostname });
    }
    this.log.level = next.log.level;
    this.token = adminToken(next);
    this.current = next;
    this.metrics.reload(true);
    this.log.info({ file: next.file, changed, certificates: 'reloaded' }, 'configuration reloaded');
    return { ok: true, changed };
  }

  /** SIGHUP: re-reads the configuration file this node was started with. */
  reloadFromFile(file: string = this.current.file): ReloadResult {
    let next: Config;
    try {
      next = loadConfig(file);
    } catch (e) {
      const reason = e instanceof ConfigError ? e.problems.join('; ') : (e as Error).message;
      this.log.error({ file, reason }, 'reload refused; the running configuration stays');
      this.metrics.reload(false);
      return { ok: false, reason };
    }
    return this.reload(next);
  }

  /**
   * Graceful stop, within node.shutdownTimeoutMs (plus shadow.timeoutMs for a message
   * being accepted at the deadline): new clients get 421 4.3.2, transactions in progress
   * finish, deliveries in flight finish, then the link and the spool close. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const timeout = this.config.node.shutdownTimeoutMs;
      const deadline = Date.now() + timeout;
      this.log.info({ shutdownTimeoutMs: timeout }, 'stopping');
      this.shadow.endDoubts();
      await this.smtp.drain(timeout);
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
