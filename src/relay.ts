/**
 * The composition root: builds every part of one node from its Config and wires them; it
 * holds no rules of its own.
 *   smtp → accept (spool ‖ shadow) → 250 → delivery → spool purge → shadow discard.
 * Parts are built in dependency order; the one call that runs against that order (new work
 * for the delivery worker, from the link and the acceptor) is a `Signal` built before them. One Metrics registry per node is handed to the parts as their metrics
 * port, and reads the state gauges from them once they are built. Config → part settings
 * is written once below (`settings`), for start and for reload. Nothing else constructs
 * parts; tests and the CLI start nodes through here.
 */
import type { Logger } from 'pino';
import { adminToken, loadConfig, ConfigError, maxShadowAgeMs, restartOnlyChanges, type Config } from './config/index.js';
import type { Spool } from './spool/index.js';
import { ThreadedSpool } from './spool/thread.js';
import { ShadowLink, type ShadowLinkSettings } from './shadow/index.js';
import { Drainer, type DrainReport } from './shadow/drain.js';
import { SmtpListener, type SmtpSettings } from './smtp/index.js';
import { NetworkList } from './smtp/networks.js';
import { ShadowedAcceptor, type AcceptSettings } from './accept/index.js';
import { DeliveryWorker, type DeliverySettings } from './delivery/index.js';
import { AdminServer, readiness } from './ops/admin.js';
import { createLogger } from './ops/log.js';
import { secretFileWarnings } from './ops/secrets.js';
import { Metrics } from './ops/metrics.js';
import { QueueService } from './ops/queue.js';
import { Dashboard } from './ops/dashboard.js';
import { CertificateWatch } from './ops/certificates.js';
import { readFileSync } from 'node:fs';
import { Signal } from './base/signal.js';
import { formatHostPort, type HostPort } from './base/net.js';

/** The package's version (package.json sits beside src/ and dist/). */
function version(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}
import { monotonicMs } from './base/clock.js';

export interface RelayAddresses {
  smtp: HostPort;
  shadow: HostPort;
  admin: HostPort;
}

export type ReloadResult = { ok: true; changed: string[] } | { ok: false; reason: string };

/** Config → the settings of each part that a reload may change (the same at start). */
const settings = {
  smtp: (cfg: Config): SmtpSettings => ({
    hostname: cfg.smtp.hostname,
    maxMessageSize: cfg.smtp.maxMessageSize,
    maxRecipients: cfg.smtp.maxRecipients,
    socketTimeoutMs: cfg.smtp.socketTimeoutMs,
    allowedNetworks: new NetworkList(cfg.smtp.allowedNetworks),
    tls: cfg.tls.smtp,
    requireTLS: cfg.smtp.requireTLS,
    relayDomains: cfg.smtp.relayDomains,
    bareLineEndings: cfg.smtp.bareLineEndings,
    auth: cfg.smtp.auth,
    limits: cfg.smtp.limits,
  }),
  shadow: (cfg: Config): ShadowLinkSettings => ({
    tls: cfg.tls.shadow,
    timeoutMs: cfg.shadow.timeoutMs,
    peers: cfg.shadow.peers,
    placement: cfg.shadow.placement,
  }),
  accept: (cfg: Config): AcceptSettings => ({ onFailure: cfg.shadow.onFailure, hostname: cfg.smtp.hostname }),
  delivery: (cfg: Config): DeliverySettings => ({
    ...cfg.delivery,
    nextHop: { ...cfg.delivery.nextHop, ca: cfg.tls.nextHopCa },
    hostname: cfg.smtp.hostname,
  }),
};

interface Parts {
  log: Logger;
  spool: Spool;
  shadow: ShadowLink;
  smtp: SmtpListener;
  acceptor: ShadowedAcceptor;
  delivery: DeliveryWorker;
  admin: AdminServer;
  metrics: Metrics;
  drainer: Drainer;
  certificates: CertificateWatch;
}

export class Relay {
  private stopping: Promise<void> | undefined;
  private current: Config;
  readonly log: Logger;
  /** the node's spool (tests and the demo look at what it holds) */
  readonly spool: Spool;
  /** the replication link (tests and the demo look at its peers) */
  readonly shadow: ShadowLink;
  /** the node's metrics registry: its only count of events (`metrics.snapshot()`) */
  readonly metrics: Metrics;
  private readonly smtp: SmtpListener;
  private readonly acceptor: ShadowedAcceptor;
  private readonly delivery: DeliveryWorker;
  private readonly admin: AdminServer;
  private readonly drainer: Drainer;
  private readonly certificates: CertificateWatch;

  private constructor(
    config: Config,
    parts: Parts,
    readonly addresses: RelayAddresses,
  ) {
    this.current = config;
    this.log = parts.log;
    this.spool = parts.spool;
    this.shadow = parts.shadow;
    this.metrics = parts.metrics;
    this.smtp = parts.smtp;
    this.acceptor = parts.acceptor;
    this.delivery = parts.delivery;
    this.admin = parts.admin;
    this.drainer = parts.drainer;
    this.certificates = parts.certificates;
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

    const metrics = new Metrics(cfg.node.name);
    // the delivery worker is built last: the parts before it ring this when they make work for it
    const deliveryDue = new Signal();
    const shadow = new ShadowLink({
      ...settings.shadow(cfg),
      nodeName: cfg.node.name,
      zone: cfg.node.zone,
      listen: cfg.shadow.listen,
      peers: cfg.shadow.peers,
      heartbeatMs: cfg.shadow.heartbeatMs,
      promoteAfterMs: cfg.shadow.promoteAfterMs,
      maxShadowAgeMs: maxShadowAgeMs(cfg),
      retryMaxAgeMs: cfg.delivery.retry.maxAgeMs,
      reconcileIntervalMs: cfg.shadow.reconcileIntervalMs,
      maxMessageSize: cfg.smtp.maxMessageSize,
      spool,
      log,
      metrics,
      onPromoted: deliveryDue.ring,
      onReleased: deliveryDue.ring,
    });
    const acceptor = new ShadowedAcceptor({
      ...settings.accept(cfg),
      spool,
      replicator: shadow,
      peerNames: () => shadow.peers().map((p) => p.name),
      log,
      onAccepted: deliveryDue.ring,
      metrics,
    });
    const delivery = new DeliveryWorker({
      ...settings.delivery(cfg),
      spool,
      log,
      onPurged: () => shadow.pumpDiscards(),
      awaitingReconcile: () => shadow.awaitingReconcile(),
      submitBounce: (b) => acceptor.acceptBounce(b),
      wakeUps: deliveryDue,
      metrics,
    });
    const smtp = new SmtpListener({ ...settings.smtp(cfg), maxBytesInFlight: cfg.smtp.maxBytesInFlight, acceptor, log, metrics });
    const drainer = new Drainer({
      nodeName: cfg.node.name,
      spool,
      link: shadow,
      log,
      stopAccepting: () => smtp.stopAccepting(cfg.node.shutdownTimeoutMs),
      pauseDelivery: () => delivery.pause(),
      resumeDelivery: () => delivery.resume(),
    });
    const certificates = new CertificateWatch(cfg.tls);
    metrics.observe({
      queueStats: () => spool.queueStats(),
      peers: () => shadow.peers(),
      discardsPending: () => spool.discardsPending(),
      spoolBytes: () => spool.diskBytes(),
      spoolMaxBytes: () => cfg.spool.maxSizeBytes,
      certificates: () => certificates.list(),
    });
    const readinessState = () => ({
      smtpStarted: smtp.isStarted,
      acceptsWithoutPeer: acceptor.onFailure === 'accept',
      // a peer whose spool is full cannot take a copy either
      anyPeerUp: shadow.canShadow(),
      peers: shadow.peers(),
      draining: shadow.isDraining,
    });
    const dashboard = new Dashboard({
      node: cfg.node.name,
      version: version(),
      adminListen: formatHostPort(cfg.admin.listen),
      startedAt: Date.now(),
      readiness: () => readiness(readinessState()),
      peers: () => shadow.peers(),
      queueCounts: () => spool.queueCounts(),
      topErrors: (n) => spool.topErrors(n),
      spoolBytes: () => spool.diskBytes(),
      spoolMaxBytes: () => cfg.spool.maxSizeBytes,
      discardsPending: () => spool.discardsPending(),
      certificates: () => certificates.list(),
      metrics,
    });
    const queue = new QueueService({
      spool,
      log,
      wake: () => delivery.wake(),
      pumpDiscards: () => shadow.pumpDiscards(),
      onChange: () => dashboard.queueChanged(),
    });
    const admin = new AdminServer({
      readiness: readinessState,
      drain: (ms) => drainer.drain(ms ?? cfg.node.drainTimeoutMs),
      metrics: () => metrics.render(),
      queue,
      dashboard,
      token: adminToken(cfg),
      log,
    });

    const shadowAddr = await shadow.start();
    const smtpAddr = await smtp.listen(cfg.smtp.listen);
    const adminAddr = await admin.listen(cfg.admin.listen);
    const addresses: RelayAddresses = { smtp: smtpAddr, shadow: shadowAddr, admin: adminAddr };
    const ui = admin.dashboardState();
    if (ui.enabled) log.info({ url: `http://${formatHostPort(adminAddr)}/`, access: ui.reason }, 'dashboard served');
    else log.warn({ admin: formatHostPort(adminAddr), reason: ui.reason }, 'dashboard disabled: set admin.token (or admin.tokenFile) to serve it on this address');
    delivery.start();
    log.info({ ...addresses }, 'shadowrelay started');
    return new Relay(cfg, { log, spool, shadow, smtp, acceptor, delivery, admin, metrics, certificates, drainer }, addresses);
  }

  /**
   * Applies a new configuration to a running node, all or nothing (see config): a refused
   * reload logs the reason and leaves the running configuration untouched.
   */
  reload(next: Config): ReloadResult {
    const restart = restartOnlyChanges(this.current, next);
    if (restart.length) return this.refuse(next.file, `${restart.join(', ')} changed: needs a restart`);
    const changed = (['smtp', 'shadow', 'delivery', 'admin', 'log'] as const).filter(
      (k) => JSON.stringify(this.current[k]) !== JSON.stringify(next[k]),
    );
    // certificates may change on disk under the same file names: always re-apply them; the
    // peer list is applied too (a node added starts taking shadows)
    this.shadow.reload(settings.shadow(next));
    this.acceptor.reload(settings.accept(next));
    this.smtp.reload(settings.smtp(next));
    if (JSON.stringify(this.current.delivery) !== JSON.stringify(next.delivery) || this.current.smtp.hostname !== next.smtp.hostname) {
      this.delivery.reload(settings.delivery(next));
    }
    this.log.level = next.log.level;
    this.admin.setToken(adminToken(next));
    this.certificates.set(next.tls);
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
      return this.refuse(file, e instanceof ConfigError ? e.problems.join('; ') : (e as Error).message);
    }
    return this.reload(next);
  }

  private refuse(file: string, reason: string): ReloadResult {
    this.log.error({ file, reason }, 'reload refused; the running configuration stays');
    this.metrics.reload(false);
    return { ok: false, reason };
  }

  /**
   * Drain (`shadowrelay drain`, `POST /drain`, `node.drainOnStop`): hands the queue and the
   * shadow copies held here to the peers, then stays up taking no mail (see shadow/drain.ts).
   */
  drain(deadlineMs: number = this.config.node.drainTimeoutMs): Promise<DrainReport> {
    return this.drainer.drain(deadlineMs);
  }

  /**
   * Graceful stop, within node.shutdownTimeoutMs (plus shadow.timeoutMs for a message
   * being accepted at the deadline): new clients get 421 4.3.2, transactions in progress
   * finish, deliveries in flight finish, then the link and the spool close. Idempotent.
   */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const timeout = this.config.node.shutdownTimeoutMs;
      this.log.info({ shutdownTimeoutMs: timeout }, 'stopping');
      // scale-down: hand the queue over first (bounded by node.drainTimeoutMs)
      if (this.config.node.drainOnStop) await this.drain().catch((err: Error) => this.log.error({ err: err.message }, 'drain failed'));
      const deadline = monotonicMs() + timeout;
      this.shadow.endDoubts();
      await this.smtp.drain(timeout);
      await this.delivery.stop(Math.max(0, deadline - monotonicMs()));
      await this.shadow.stop();
      await this.admin.close();
      await this.spool.close();
      this.log.info('stopped');
      this.log.flush?.();
    })();
    return this.stopping;
  }
}
