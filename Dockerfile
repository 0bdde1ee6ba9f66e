# shadowrelay image: one relay node per container (see docker-compose.yml for a pair).
# Build: docker build -t shadowrelay:local .
# Run:   docker run -v /path/node.yaml:/etc/shadowrelay/shadowrelay.yaml:ro \
#          -v /path/certs:/etc/shadowrelay/certs:ro -v spool:/var/lib/shadowrelay shadowrelay:local

ARG NODE_VERSION=20

# ---- build: compile TypeScript (product and tools), then drop the development dependencies
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
# better-sqlite3 compiles from source when no prebuilt binary matches the platform
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY tools ./tools
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# ---- sink: the compose pair's test next hop; a tool, kept out of the product image ------
FROM node:${NODE_VERSION}-bookworm-slim AS sink
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist-tools ./dist-tools
USER node
EXPOSE 2600
ENTRYPOINT ["node", "/app/dist-tools/tools/cli.js", "sink"]

# ---- runtime (the product image): production dependencies and the compiled product only, non-root
FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production
# as the systemd unit: bodies of 128 KB and more from mmap, returned when freed (README "Performance")
ENV MALLOC_MMAP_THRESHOLD_=131072
# and V8's young generation of 4 MB semi-spaces (16 by default): 24 MB less heap per node
ENV NODE_OPTIONS=--max-semi-space-size=4
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY README.md ./README.md
# mount points owned by the unprivileged user, so fresh named volumes inherit that owner
RUN mkdir -p /var/lib/shadowrelay /etc/shadowrelay/certs \
 && chown -R node:node /var/lib/shadowrelay /etc/shadowrelay/certs
USER node
# the spool: keep it on a volume (losing it loses the copies this node holds)
VOLUME ["/var/lib/shadowrelay"]
# SMTP, replication link (mutual TLS); the admin endpoint stays on the container's loopback
EXPOSE 2525 2625
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "/app/dist/cli.js", "health", "--config", "/etc/shadowrelay/shadowrelay.yaml"]
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["start", "--config", "/etc/shadowrelay/shadowrelay.yaml"]
